#!/usr/bin/env bash
# One GPU check of packed training, for a bare machine with torch, timm, torchvision, pandas, pyarrow, fsspec and
# pillow installed (no Ray, lpips or s3fs needed: the trainer modules are imported directly). Under 8 minutes:
#   1. the environment, and that the trainer modules import without Ray;
#   2. pack equality on the GPU: pairs alone vs in packs, fp32 and bf16 (the default precision), ViT-B/8 random
#      weights, eager (compiling ViT-B/8 for every batch size would not fit the time; it changes no per-pair math);
#   3. benchmarks/throughput.py: ViT-B/8 random weights, bf16, K = 1, 2, 4, 8, 16, 512x512 pairs and the HD pair,
#      today's single-pair step as the same-run baseline, within a time budget (rows past it are marked skipped);
#   3b. benchmarks/splicenet.py: SpliceNet inference at full width, ViT-B/8 random weights, bf16, 512x512 pairs,
#      batch 1, 8, 32 (batch 1 the same-run baseline): pairs/s, peak memory, outputs unchanged by batching;
#   4. a short table: OUT/summary.md (+ every figure in OUT/*.json).
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
timeout 60 "$PY" benchmarks/pack_equality.py --device cuda --precision fp32 --compile off --steps 8 \
    --backbone "$BACKBONE" --json "$OUT_DIR/equality_fp32.json" 2>&1 | tail -3 | tee -a "$OUT_DIR/device_check.log" || status=1
timeout 60 "$PY" benchmarks/pack_equality.py --device cuda --precision bf16 --compile off --steps 8 \
    --backbone "$BACKBONE" --json "$OUT_DIR/equality_bf16.json" 2>&1 | tail -3 | tee -a "$OUT_DIR/device_check.log" || status=1

echo "== 3. throughput" | tee -a "$OUT_DIR/device_check.log"
timeout 210 "$PY" benchmarks/throughput.py --device cuda --backbone "$BACKBONE" --precision auto --compile auto \
    --packs 1,2,4,8,16 --sizes 512,hd --warmup 5 --steps 15 --time-budget 170 \
    --json "$OUT_DIR/throughput.json" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/device_check.log" || status=1

echo "== 3b. SpliceNet inference" | tee -a "$OUT_DIR/device_check.log"
timeout 120 "$PY" benchmarks/splicenet.py --part inference --device cuda --backbone "$BACKBONE" --precision auto \
    --width 1 --size 512 --batches 1,8,32 --warmup 2 --repeats 5 --time-budget 90 \
    --json "$OUT_DIR/splicenet.json" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/device_check.log" || status=1

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
