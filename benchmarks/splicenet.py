"""SpliceNet speed at 512x512: training steps/s against per-pair Splice training, and inference pairs/s at batch
1 / 8 / 32 against batch 1, each baseline measured in the same run.

    python benchmarks/splicenet.py --quick                      # CPU, minutes: ViT-S/16 shapes, width 1/4
    python benchmarks/splicenet.py --part training --batches 1,8,32 --device cuda --json out.json
    python benchmarks/splicenet.py --part inference --device cuda --json out.json      # + peak memory per batch

Training (`bench_training`), for each batch size B:
  splicenet   one SpliceNet training step over B pairs, as `splice train-net` runs it: crops of 512x512 pool images
              (sample_crops), objective.conditioned_losses (one generator call, two backbone passes), backward,
              Adam, zero_grad; timed over steady-state steps, the device synced at the window's ends only
  per-pair    baseline: one step of B per-pair Splice generators packed together (trainer.train_pack's step:
              pack_losses over B pairs), the cost of training B pairs the per-pair way for one step
Rows give s/step, pair-steps/s (B / s per step) and the ratio to the baseline's pair-steps/s. A SpliceNet step teaches
one network every pair of the domain; a per-pair step advances one pair's own generator, which needs ~2000 of them.

Inference (`bench_inference`) times the method's own path, `pipeline.method.splicenet_apply.transfer`, on B pairs at
once: the [CLS] codes of the B appearance images (one backbone pass), the net's forward pass over the B structure
images, and the uint8 outputs back on the CPU; the device is synchronised at both ends. Reading, decoding and writing
files are left out (the same for every method). Rows: batch, s per batch, pairs/s, pairs/s over batch 1's, the share
of time in the [CLS] codes, peak memory (CUDA allocated; n/a on CPU), and the largest difference of the first pair's
output from the first batch size's (batching must not change outputs beyond rounding).

Random weights cost the same as real ones. Needs torch/timm only (no Ray).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from pipeline.method.augment import sample_group
from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.grouped_generator import GroupedGenerator
from pipeline.method.objective import GroupStep, conditioned_losses, loss_weights, pack_losses
from pipeline.method.splicenet import SpliceNet, SpliceNetConfig
from pipeline.method.splicenet_apply import appearance_codes, transfer
from pipeline.method.splicenet_train import (
    NetTrainConfig,
    draw_pairs,
    sample_crops,
    worker_slice,
)
from pipeline.method.trainer import resolve_device, resolve_precision

POOL = 8  # distinct images in the synthetic domain


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smooth_image(seed: int, side: int) -> torch.Tensor:
    """(3, side, side) uint8: smooth random colours."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return (
        (torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear")[0] * 255).round().to(torch.uint8)
    )


def timed(step, device: torch.device, warmup: int, measured: int) -> float:
    """Seconds per call of step(i), over `measured` calls after `warmup`."""
    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + measured):
        step(i)
    sync(device)
    return (time.perf_counter() - start) / measured


def splicenet_step(backbone, device, config: NetTrainConfig, precision):
    images = {i: smooth_image(i, config.resolution) for i in range(POOL)}
    torch.manual_seed(0)
    net = SpliceNet(SpliceNetConfig(width=config.width, code_dim=int(backbone.vit.cls_token.shape[-1]))).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
    samples = worker_slice(config.batch, 0, 1)

    def step(i: int) -> None:
        pairs = draw_pairs(config.seed, i, config.batch, [list(range(POOL))])
        structure, appearance = sample_crops(config.seed, i, samples, pairs, images, config, device)
        conditioned_losses(net, backbone, structure, appearance, config.loss_weights, precision)["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def per_pair_step(backbone, device, batch: int, side: int, precision):
    """B per-pair Splice generators, one packed step as the trainer runs same-size pairs: one grouped generator
    (crop terms on; the every-75-steps full-image pass left out)."""
    config = TrainConfig()
    generator = GroupedGenerator.from_generators([SkipGenerator() for _ in range(batch)]).to(device).train()
    optimizer = torch.optim.Adam(generator.slot_parameters(), lr=config.lr, betas=config.betas)
    structures = torch.cat([smooth_image(2 * i, side).to(device).float().div(255)[None] for i in range(batch)])
    appearances = torch.cat([smooth_image(2 * i + 1, side).to(device).float().div(255)[None] for i in range(batch)])
    rngs = [random.Random(i) for i in range(batch)]
    weights = loss_weights(1, config)

    def step(i: int) -> None:
        group_batch = sample_group(rngs, structures, appearances, [config] * batch, i + 1, include_full=False)
        (terms,) = pack_losses([GroupStep(generator, group_batch, [weights] * batch)], backbone, precision)
        terms.total.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_training(
    backbone_spec: str,
    device: torch.device,
    batches: list[int],
    resolution: int = 512,
    width: float = 1.0,
    warmup: int = 1,
    measured: int = 3,
    baseline: bool = True,
) -> list[dict]:
    """Training rows (one per batch size): SpliceNet steps/s and pair-steps/s, and the per-pair baseline's."""
    backbone = load_backbone(backbone_spec, device)
    precision = resolve_precision("auto", device)
    rows = []
    for batch in batches:
        config = NetTrainConfig(backbone=backbone_spec, resolution=resolution, batch=batch, width=width)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(splicenet_step(backbone, device, config, precision), device, warmup, measured)
        row = {
            "batch": batch,
            "resolution": resolution,
            "width": width,
            "splicenet_s_per_step": seconds,
            "splicenet_steps_per_s": 1 / seconds,
            "splicenet_pair_steps_per_s": batch / seconds,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        if baseline:
            base = timed(per_pair_step(backbone, device, batch, resolution, precision), device, warmup, measured)
            row.update(
                per_pair_s_per_step=base,
                per_pair_pair_steps_per_s=batch / base,
                ratio=(batch / seconds) / (batch / base),
            )
        rows.append(row)
        print(training_line(row), flush=True)
    return rows


def training_line(row: dict) -> str:
    line = (
        f"B={row['batch']:<3d} {row['resolution']}px width {row['width']:g}: SpliceNet {row['splicenet_s_per_step']:.3f} "
        f"s/step = {row['splicenet_steps_per_s']:.3g} steps/s = {row['splicenet_pair_steps_per_s']:.3g} pair-steps/s"
    )
    if "per_pair_s_per_step" in row:
        line += (
            f" | per-pair Splice {row['per_pair_s_per_step']:.3f} s/step = {row['per_pair_pair_steps_per_s']:.3g} "
            f"pair-steps/s | x{row['ratio']:.2f}"
        )
    if row.get("peak_memory_gb") is not None:
        line += f" | peak {row['peak_memory_gb']:.2f} GiB"
    return line


def bench_inference(
    device: str = "auto",
    backbone: str = "random:vit_base_patch8_224.dino",
    width: float = 1.0,
    size: int = 512,
    batches: tuple[int, ...] = (1, 8, 32),
    repeats: int = 3,
    warmup: int = 1,
    precision: str = "auto",
    time_budget: float | None = None,
    log=print,
) -> dict:
    """Inference pairs/s for each batch size; rows past `time_budget` seconds are marked skipped."""
    device = resolve_device(device)
    dtype = resolve_precision(precision, device)
    features = load_backbone(backbone, device)
    torch.manual_seed(0)
    net = SpliceNet(SpliceNetConfig(width=width, code_dim=int(features.vit.embed_dim))).to(device).eval()
    started, rows, first = time.perf_counter(), [], None  # first: pair 0's output at the first batch size
    for batch in batches:
        if time_budget is not None and time.perf_counter() - started > time_budget:
            rows.append({"batch": batch, "skipped": f"past the {time_budget:.0f}s budget"})
            continue
        structures = [smooth_image(2 * i, size) for i in range(batch)]  # every batch starts with the same pair
        appearances = [smooth_image(2 * i + 1, size) for i in range(batch)]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            for _ in range(warmup):
                transfer(net, features, structures, appearances, device, precision=dtype, max_batch=batch)
            totals, codes = [], []
            for _ in range(repeats):
                sync(device)
                clock = time.perf_counter()
                outputs = transfer(net, features, structures, appearances, device, precision=dtype, max_batch=batch)
                sync(device)
                totals.append(time.perf_counter() - clock)
                clock = time.perf_counter()
                appearance_codes(features, structures, appearances, 1.0, device, dtype=dtype)
                sync(device)
                codes.append(time.perf_counter() - clock)
        except torch.OutOfMemoryError as exc:
            rows.append({"batch": batch, "skipped": f"out of memory ({str(exc).splitlines()[0][:80]})"})
            continue
        assert len(outputs) == batch and tuple(outputs[0].shape) == (3, size, size)
        first = outputs[0] if first is None else first  # every batch starts with the same pair
        seconds = statistics.median(totals)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(
            {
                "batch": batch,
                "s_per_batch": seconds,
                "pairs_per_s": batch / seconds,
                "codes_share": statistics.median(codes) / seconds,
                "peak_memory_gib": peak,
                "max_difference_uint8": int((outputs[0].int() - first.int()).abs().max()),
            }
        )
        log(f"batch {batch}: {seconds:.3f} s, {batch / seconds:.2f} pairs/s")
    base = next((row["pairs_per_s"] for row in rows if row.get("batch") == 1 and "pairs_per_s" in row), None)
    for row in rows:
        if base and "pairs_per_s" in row:
            row["vs_batch_1"] = row["pairs_per_s"] / base
    context = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "backbone": backbone,
        "width": width,
        "size": size,
        "precision": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch": torch.__version__,
        "net_parameters": sum(p.numel() for p in net.parameters()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return {"context": context, "rows": rows}


def inference_table(rows: list[dict]) -> str:
    lines = [
        "| batch | s/batch | pairs/s | x batch 1 | codes share | peak GiB | output vs batch 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("skipped"):
            lines.append(f"| {row['batch']} | skipped: {row['skipped']} | | | | | |")
            continue
        peak = "n/a" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(
            f"| {row['batch']} | {row['s_per_batch']:.3f} | {row['pairs_per_s']:.2f} | "
            f"{row.get('vs_batch_1', float('nan')):.2f} | {row['codes_share']:.0%} | {peak} | "
            f"{row['max_difference_uint8']}/255 |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "training", "inference"), default="all", help="what to measure")
    parser.add_argument(
        "--backbone",
        default="random:vit_base_patch8_224.dino",
        help="backbone spec (default: DINO ViT-B/8's shapes, random weights)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", help="batch sizes, comma-separated (default: training 1,4; inference 1,8,32)")
    parser.add_argument(
        "--size",
        "--resolution",
        dest="size",
        type=int,
        default=512,
        help="image side: training crops and inference images (default 512)",
    )
    parser.add_argument("--width", type=float, default=1.0, help="SpliceNet channel multiplier")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="measured training steps per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes per row (median)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="inference precision")
    parser.add_argument("--time-budget", type=float, help="inference: skip the batch sizes left after this many s")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-pair Splice training baseline")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized: ViT-S/16 shapes, width 1/4, batches 1,2, 2 measured steps, 1 inference pass",
    )
    parser.add_argument("--json", help="write the rows and the machine here")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.width, args.batches, args.steps, args.repeats = (
            "random:vit_small_patch16_224.dino",
            0.25,
            "1,2",
            2,
            1,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    result = {
        "backbone": args.backbone,
        "device": str(device),
        "host": platform.node(),
        "torch": torch.__version__,
        "when": datetime.now(timezone.utc).isoformat(),
    }
    if args.part in ("all", "training"):
        batches = [int(b) for b in (args.batches or "1,4").split(",") if b.strip()]
        print(
            f"SpliceNet training, {args.backbone} on {device} ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads), torch {torch.__version__}"
        )
        result["training"] = bench_training(
            args.backbone,
            device,
            batches,
            args.size,
            args.width,
            args.warmup,
            args.steps,
            baseline=not args.no_baseline,
        )
    if args.part in ("all", "inference"):
        batches = tuple(int(b) for b in (args.batches or "1,8,32").split(",") if b.strip())
        inference = bench_inference(
            str(device),
            args.backbone,
            args.width,
            args.size,
            batches,
            args.repeats,
            args.warmup,
            args.precision,
            args.time_budget,
            log=lambda line: print(line, file=sys.stderr),
        )
        c = inference["context"]
        print(
            f"\nSpliceNet inference on {c['device_name']} ({c['device']}), width {c['width']} "
            f"({c['net_parameters'] / 1e6:.1f} M parameters), {c['backbone']}, {c['size']}x{c['size']}, "
            f"{c['precision']}, {c['threads']} thread(s), torch {c['torch']}, {c['date']}\n"
        )
        print(inference_table(inference["rows"]))
        result["inference"] = inference
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
