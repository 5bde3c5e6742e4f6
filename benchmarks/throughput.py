"""Pairs per hour with packed training, against today's single-pair step measured in the same run.

    python benchmarks/throughput.py --quick                          # CPU, a few minutes: small images and ViT
    python benchmarks/throughput.py --backbone random:vit_base_patch8_224 --device cuda --json out.json

For each image size (512x512 pairs; the HD pair: structure 1200x900, appearance 1280x982) and each pack size K:
  packed     trainer.train_pack over K pairs (distinct seeds), timed over steady-state steps (device synced at
             both ends of the window only), compile per --compile, in the torch.compile mode --compile-mode
             (reduce-overhead: CUDA graphs; on a CPU it falls back to the default mode, with a message)
  baseline   today's single-pair step, as the trainer ran it before packing: splice_losses + backward + a default
             torch.optim.Adam over one generator, one pair at a time, eager
  authors    the structure of the authors' loop (benchmarks/train_step.py), where --authors is given
Rows give s/step of the pack, s per pair-step (s/step / K), pairs per hour for a --pair-steps run (the paper's 2000)
from the pair-step time plus the measured per-pack cost of producing the outputs, peak memory, and the ratio of
pairs per hour to the baseline's. Random weights cost the same as real ones. Needs torch/timm only (no Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from pipeline.method.augment import sample_batch
from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.objective import full_structure_target, loss_weights, splice_losses
from pipeline.method.trainer import PairInput, TrainOptions, resolve_device, resolve_precision, train_pack

HD = ((900, 1200), (982, 1280))
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SQUARE_512 = ((512, 512), (512, 512))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images(seed: int, size: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]
    return (smooth * 255).round().to(torch.uint8)


def pair_inputs(count: int, sizes, config: TrainConfig) -> list[PairInput]:
    return [
        PairInput(f"pair{i}", images(2 * i, sizes[0]), images(2 * i + 1, sizes[1]), config.replace(seed=i))
        for i in range(count)
    ]


def packed(backbone, device, sizes, pack: int, config: TrainConfig, warmup: int, measured: int, options) -> dict:
    """Time steps warmup..warmup+measured of a real train_pack run (the device synced at the window's ends)."""
    marks = {}
    last = warmup + measured

    def on_step(pair_id: str, step: int) -> None:
        if pair_id == "pair0" and step in (warmup, last):
            sync(device)
            marks[step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = train_pack(
        pair_inputs(pack, sizes, config.replace(steps=last)), backbone, device, options=options, on_step=on_step
    )
    sync(device)
    finish = time.perf_counter() - marks[last]  # every pair's output, at full resolution
    failed = [pair_id for pair_id, result in results.items() if isinstance(result, Exception)]
    if failed:
        raise RuntimeError(f"pairs {failed} failed: {results[failed[0]]}")
    step = (marks[last] - marks[warmup]) / measured
    return {"s_per_step": step, "finish_seconds": finish, "peak_memory_gib": _peak(device)}


def baseline(backbone, device, sizes, config: TrainConfig, warmup: int, measured: int) -> dict:
    """Today's step before packing: one pair, splice_losses + backward + default Adam, eager."""
    precision = resolve_precision(config.precision, device)
    structure = images(0, sizes[0]).to(device).float().div(255)[None]
    appearance = images(1, sizes[1]).to(device).float().div(255)[None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = SkipGenerator().to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    rng = random.Random(0)
    full_target = full_structure_target(backbone, structure, precision)
    for step in range(warmup + measured):
        if step == warmup:
            sync(device)
            started = time.perf_counter()
        weights = loss_weights(step, config)
        batch = sample_batch(rng, structure, appearance, config, include_full=weights.full_image)
        terms = splice_losses(generator, backbone, batch, weights, full_target, precision)
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    step = (time.perf_counter() - started) / measured
    return {"s_per_step": step, "finish_seconds": 0.0, "peak_memory_gib": _peak(device)}


def authors(backbone, device, sizes, config: TrainConfig, warmup: int, measured: int) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_step import authors_steps  # the authors' loop structure, shared with benchmarks/train_step.py

    structure = images(0, sizes[0]).to(device).float().div(255)[None]
    appearance = images(1, sizes[1]).to(device).float().div(255)[None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = authors_steps(backbone, structure, appearance, config, device, warmup + measured)[warmup:]
    return {"s_per_step": statistics.mean(times), "finish_seconds": 0.0, "peak_memory_gib": _peak(device)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized: random ViT-Ti/16, pairs of 128x128 and the HD pair shrunk to 240 px, K 1, 2, 4",
    )
    parser.add_argument("--backbone", default="random:vit_base_patch8_224")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode where compiling (reduce-overhead: CUDA graphs, CUDA only; elsewhere the default mode)",
    )
    parser.add_argument("--packs", default="1,2,4,8,16", help="pack sizes K, comma-separated")
    parser.add_argument("--sizes", default="512,hd", help="512 (512x512 pairs), hd (1200x900 / 1280x982), or N (NxN)")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed window (compiling happens here)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--pair-steps", type=int, default=2000, help="steps per pair for pairs/hour (paper: 2000)")
    parser.add_argument("--authors", action="store_true", help="also time the authors' loop structure")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds: skip the rows left after this")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 on a busy machine)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.backbone, args.packs, args.sizes = "random:vit_tiny_patch16_224", "1,2,4", "128,hd240"
        args.warmup, args.steps, args.authors = 2, 4, True

    started = time.perf_counter()
    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, device)
    config = TrainConfig(backbone=args.backbone, precision=args.precision, log_every=10**6)
    compile_mode = _compile_mode(args.compile_mode, args.compile, device)
    options = TrainOptions(compile=args.compile, compile_mode=compile_mode)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    context = {
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "precision": str(resolve_precision(args.precision, device)),
        "compile": args.compile,
        "compile_mode": compile_mode or "default",
        "torch": torch.__version__,
        "pair_steps": args.pair_steps,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average": _load(),
    }
    print(" ".join(f"{k}={v}" for k, v in context.items()), flush=True)

    rows = []
    for size_name in args.sizes.split(","):
        sizes = _sizes(size_name)
        plan = (
            [("baseline", 1)]
            + ([("authors", 1)] if args.authors else [])
            + [("packed", int(k)) for k in args.packs.split(",")]
        )
        reference = None
        for loop, pack in plan:
            if args.time_budget and time.perf_counter() - started > args.time_budget:
                print(f"time budget spent: skipping {size_name} {loop} K={pack}", flush=True)
                rows.append({**context, "size": size_name, "loop": loop, "pack": pack, "skipped": "time budget"})
                _write(args.json, context, rows, started)
                continue
            measure = {"baseline": baseline, "authors": authors}.get(loop)
            try:
                if measure is not None:
                    figures = measure(backbone, device, sizes, config, args.warmup, args.steps)
                else:
                    figures = packed(backbone, device, sizes, pack, config, args.warmup, args.steps, options)
            except torch.cuda.OutOfMemoryError as exc:
                print(f"{size_name} {loop} K={pack}: out of memory ({str(exc).splitlines()[0][:120]})", flush=True)
                rows.append({**context, "size": size_name, "loop": loop, "pack": pack, "skipped": "out of memory"})
                _write(args.json, context, rows, started)
                torch.cuda.empty_cache()
                continue
            except Exception as exc:  # e.g. a compile mode that fails on this machine: the other rows still run
                reason = f"failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
                print(f"{size_name} {loop} K={pack}: {reason}", flush=True)
                rows.append({**context, "size": size_name, "loop": loop, "pack": pack, "skipped": reason})
                _write(args.json, context, rows, started)
                continue
            pair_step = figures["s_per_step"] / pack
            per_pair = args.pair_steps * pair_step + figures["finish_seconds"] / pack
            row = {
                **context,
                "size": size_name,
                "structure": list(sizes[0]),
                "appearance": list(sizes[1]),
                "loop": loop,
                "pack": pack,
                **figures,
                "s_per_pair_step": pair_step,
                "seconds_per_pair": per_pair,
                "pairs_per_hour": 3600 / per_pair,
            }
            if loop == "baseline":
                reference = row["pairs_per_hour"]
            row["vs_baseline"] = row["pairs_per_hour"] / reference if reference else None
            rows.append(row)
            print(
                f"{size_name} {loop} K={pack}: {row['s_per_step']:.4f} s/step, {pair_step:.4f} s/pair-step, "
                f"{row['pairs_per_hour']:.1f} pairs/h ({row['vs_baseline']:.2f}x baseline)",
                flush=True,
            )
            _write(args.json, context, rows, started)  # after every row: a run cut off by a timeout keeps its rows

    print()
    print(table(rows))
    _write(args.json, context, rows, started)
    return rows


def _write(path: str | None, context: dict, rows: list[dict], started: float) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump({"context": context, "rows": rows, "seconds": time.perf_counter() - started}, handle, indent=2)


def table(rows: list[dict]) -> str:
    lines = [
        "| pair | loop | K | s/step | s/pair-step | pairs/hour | x baseline | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("skipped"):
            lines.append(f"| {row['size']} | {row['loop']} | {row['pack']} | skipped: {row['skipped']} | | | | |")
            continue
        peak = "n/a" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(
            f"| {row['size']} | {row['loop']} | {row['pack']} | {row['s_per_step']:.4f} | "
            f"{row['s_per_pair_step']:.4f} | {row['pairs_per_hour']:.1f} | {row['vs_baseline']:.2f} | {peak} |"
        )
    return "\n".join(lines)


def graphs_table(eager: list[dict], graphs: list[dict]) -> str:
    """Packed rows of an eager run and of a CUDA-graphs run (--compile-mode reduce-overhead), side by side."""
    lines = [
        "| pair | K | eager s/step | graphs s/step | graphs / eager | eager pairs/hour | graphs pairs/hour "
        "| eager peak GiB | graphs peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(row["size"], row["pack"]): row for row in graphs if row["loop"] == "packed"}
    for first in (row for row in eager if row["loop"] == "packed"):
        pair = (first, by_key.get((first["size"], first["pack"])))
        done = [row if row is not None and not row.get("skipped") else None for row in pair]
        times = [f"{row['s_per_step']:.4f}" if row else _why(given) for row, given in zip(done, pair)]
        ratio = f"{done[1]['s_per_step'] / done[0]['s_per_step']:.2f}" if all(done) else "n/a"
        hours = [f"{row['pairs_per_hour']:.1f}" if row else "n/a" for row in done]
        peaks = [
            f"{row['peak_memory_gib']:.2f}" if row and row["peak_memory_gib"] is not None else "n/a" for row in done
        ]
        lines.append(
            f"| {first['size']} | {first['pack']} | {times[0]} | {times[1]} | {ratio} | {hours[0]} | {hours[1]} | "
            f"{peaks[0]} | {peaks[1]} |"
        )
    return "\n".join(lines)


def _why(row: dict | None) -> str:
    return "not run" if row is None else f"skipped: {row.get('skipped')}"


def _sizes(name: str):
    if name == "512":
        return SQUARE_512
    if name == "hd":
        return HD
    if name.startswith("hd"):  # the HD pair shrunk so the structure's long side is N
        scale = int(name[2:]) / HD[0][1]
        return tuple((round(h * scale), round(w * scale)) for h, w in HD)
    side = int(name)
    return (side, side), (side, side)


def _compile_mode(mode: str, compile: str, device: torch.device) -> str | None:
    """The torch.compile mode to pass on (None: torch's default). CUDA graphs need a CUDA device: elsewhere
    reduce-overhead is dropped, with a message, and the run goes on as --compile says."""
    if mode == "default":
        return None
    if mode == "reduce-overhead" and device.type != "cuda":
        compiled = compile == "on"  # auto compiles on CUDA only
        print(
            f"--compile-mode {mode} captures CUDA graphs, which need a CUDA device: on {device.type} it is ignored "
            f"and the pack runs {'compiled in the default mode' if compiled else 'eagerly'} (--compile {compile})",
            flush=True,
        )
        return None
    return mode


def _peak(device: torch.device):
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
