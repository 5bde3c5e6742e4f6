#!/usr/bin/env bash
# One GPU check of packed training, for a bare machine with torch, timm, torchvision, pandas, pyarrow, fsspec and
# pillow installed (no Ray, lpips or s3fs needed: the trainer modules are imported directly). Under 8 minutes in all:
# every step has a `timeout`; they add up to 450 s, plus ~20 s for the environment check and the summary.
# Each throughput.py call rewrites its JSON after every row, so a step cut off by its timeout keeps the rows it did.
#   1. the environment, and that the trainer modules import without Ray;
#   2. pack equality on the GPU: pairs alone vs in packs, fp32 and bf16 (the default precision), ViT-B/8 random
#      weights, eager (compiling ViT-B/8 for every batch size would not fit the time; it changes no per-pair math);
#      40 s each (was 60 s: 8 steps of a few pairs take seconds once the backbone is loaded);
#   3. benchmarks/throughput.py: ViT-B/8 random weights, bf16, K = 1, 4, 16 (was 1, 2, 4, 8, 16: the K of 3c, so the
#      rows line up), 512x512 pairs and the HD pair, compile auto (the backbone compiled, default mode), today's
#      single-pair step as the same-run baseline, within a time budget (rows past it are marked skipped);
#      100 s, budget 75 s (was 210 / 170);
#   3b. benchmarks/splicenet.py: SpliceNet inference at full width, ViT-B/8 random weights, bf16, 512x512 pairs,
#      batch 1, 8, 32 (batch 1 the same-run baseline): pairs/s, peak memory, outputs unchanged by batching;
#      70 s, budget 50 s (was 120 / 90);
#   3c. eager vs CUDA graphs: benchmarks/throughput.py twice over K = 1, 4, 16, 512x512 pairs and the HD pair,
#      ViT-B/8 random weights, bf16: once eager (--compile off; 60 s, budget 40 s) and once with torch.compile mode
#      "reduce-overhead" (--compile on --compile-mode reduce-overhead: CUDA graphs, one per captured shape; 140 s,
#      budget 110 s, 8 warm-up steps per row for compiling and recording), with peak memory;
#   4. a short table: OUT/summary.md (+ every figure in OUT/*.json).
# benchmarks/opcount.py (dispatched ops per pair-step) is not run here: it counts on the CPU, where it gives the same
# figures.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        # default OUT_DIR: $OUT, else benchmarks/device-check-out
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/device-check-out}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
BACKBONE="random:vit_base_patch8_224"
status=0

echo "== 1. environment" | tee "$OUT_DIR/device_check.log"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT_DIR/device_check.log" || status=1
import sys
import torch, timm
print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__,
      "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
import pipeline.method.registry, pipeline.runs.packs, pipeline.method.trainer  # noqa: F401  (the worker-side modules)
import pipeline.method.splicenet_apply  # noqa: F401  (SpliceNet inference)
assert "ray" not in sys.modules, "the trainer modules import Ray"
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print("trainer modules import without ray: ok")
EOF
[ "$status" = 0 ] || { echo "environment check failed"; exit 1; }

echo "== 2. pack equality" | tee -a "$OUT_DIR/device_check.log"
timeout 40 "$PY" benchmarks/pack_equality.py --device cuda --precision fp32 --compile off --steps 8 \
    --backbone "$BACKBONE" --json "$OUT_DIR/equality_fp32.json" 2>&1 | tail -3 | tee -a "$OUT_DIR/device_check.log" || status=1
timeout 40 "$PY" benchmarks/pack_equality.py --device cuda --precision bf16 --compile off --steps 8 \
    --backbone "$BACKBONE" --json "$OUT_DIR/equality_bf16.json" 2>&1 | tail -3 | tee -a "$OUT_DIR/device_check.log" || status=1

echo "== 3. throughput" | tee -a "$OUT_DIR/device_check.log"
timeout 100 "$PY" benchmarks/throughput.py --device cuda --backbone "$BACKBONE" --precision auto --compile auto \
    --packs 1,4,16 --sizes 512,hd --warmup 5 --steps 15 --time-budget 75 \
    --json "$OUT_DIR/throughput.json" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/device_check.log" || status=1

echo "== 3b. SpliceNet inference" | tee -a "$OUT_DIR/device_check.log"
timeout 70 "$PY" benchmarks/splicenet.py --part inference --device cuda --backbone "$BACKBONE" --precision auto \
    --width 1 --size 512 --batches 1,8,32 --warmup 2 --repeats 5 --time-budget 50 \
    --json "$OUT_DIR/splicenet.json" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/device_check.log" || status=1

echo "== 3c. eager vs CUDA graphs" | tee -a "$OUT_DIR/device_check.log"
timeout 60 "$PY" benchmarks/throughput.py --device cuda --backbone "$BACKBONE" --precision auto --compile off \
    --packs 1,4,16 --sizes 512,hd --warmup 3 --steps 10 --time-budget 40 \
    --json "$OUT_DIR/throughput_eager.json" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/device_check.log" || status=1
timeout 140 "$PY" benchmarks/throughput.py --device cuda --backbone "$BACKBONE" --precision auto --compile on \
    --compile-mode reduce-overhead --packs 1,4,16 --sizes 512,hd --warmup 8 --steps 10 --time-budget 110 \
    --json "$OUT_DIR/throughput_graphs.json" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/device_check.log" || status=1

echo "== 4. summary" | tee -a "$OUT_DIR/device_check.log"
"$PY" - "$OUT_DIR" <<'EOF' 2>&1 | tee "$OUT_DIR/summary.md"
import json, os, sys
out = sys.argv[1]
sys.path.insert(0, "benchmarks")
from throughput import table
for name in ("equality_fp32", "equality_bf16"):
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path):
        e = json.load(open(path))
        print(f"- pack equality {e['precision']} (compile {e['compile']}) on {e['device']}: largest relative loss "
              f"difference {e['max_relative_loss_difference']:.2e}, largest output difference "
              f"{e['max_output_difference_uint8']}/255")
    else:
        print(f"- {name}: no result (see device_check.log)")
path = os.path.join(out, "throughput.json")
if os.path.exists(path):
    t = json.load(open(path))
    c = t["context"]
    print(f"\nthroughput on {c['device_name']}, {c['backbone']}, {c['precision']}, compile {c['compile']}, "
          f"torch {c['torch']}, {c['date']}; pairs/hour for {c['pair_steps']} steps per pair\n")
    print(table(t["rows"]))
else:
    print("- throughput: no result (see device_check.log)")
from throughput import graphs_table
paths = [os.path.join(out, f"throughput_{name}.json") for name in ("eager", "graphs")]
if all(os.path.exists(p) for p in paths):
    eager, graphs = (json.load(open(p)) for p in paths)
    c = graphs["context"]
    print(f"\neager vs CUDA graphs (torch.compile mode {c['compile_mode']}) on {c['device_name']}, {c['backbone']}, "
          f"{c['precision']}, torch {c['torch']}, {c['date']}; graphs/eager < 1 is faster\n")
    print(graphs_table(eager["rows"], graphs["rows"]))
else:
    print("- eager vs CUDA graphs: no result (see device_check.log)")
from splicenet import inference_table
path = os.path.join(out, "splicenet.json")
if os.path.exists(path):
    s = json.load(open(path))["inference"]
    c = s["context"]
    print(f"\nSpliceNet inference on {c['device_name']}, width {c['width']}, {c['backbone']}, {c['size']}x{c['size']}, "
          f"{c['precision']}, torch {c['torch']}, {c['date']}\n")
    print(inference_table(s["rows"]))
else:
    print("- SpliceNet inference: no result (see device_check.log)")
EOF
exit $status
