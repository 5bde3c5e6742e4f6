"""Evaluation speed: seconds per pair of each metric alone and of all together (which share backbone passes),
on generated ~512 px pairs with random weights of the real architectures (ViT-B/8, ViT-S/16, AlexNet LPIPS,
DeepLabV3-MobileNetV3). The baseline, measured in the same run, is each metric alone at batch size 1.

    .venv/bin/python benchmarks/eval_speed.py [--pairs 2] [--size 512] [--device cpu] [--batch-sizes 1,4]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from evaluation.engine import PairImages, compute_metrics
from evaluation.metrics import METRICS
from evaluation.models import EvalSettings, best_device, load_metric_models

BACKBONES = "dino_vitb8=random:vit_base_patch8_224,dino_vits16=random:vit_small_patch16_224"


def make_pairs(count: int, size: int) -> list[PairImages]:
    generator = torch.Generator().manual_seed(0)

    def image(height, width):
        coarse = torch.rand(1, 3, 8, 8, generator=generator)
        return (torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0] * 255).to(torch.uint8)

    short = size * 3 // 4  # 512 x 384 structure and output, 512 x 512 appearance
    return [PairImages(f"p{i}", image(short, size), image(size, size), image(short, size)) for i in range(count)]


def timed(pairs, names, models, device, batch_size) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    scores = compute_metrics(pairs, names, models, device, batch_size)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    assert not any(s.errors for s in scores.values()), scores
    return (time.perf_counter() - started) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="long side of the generated images")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-sizes", default="1,4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = torch.device(args.device) if args.device else best_device()
    settings = EvalSettings(
        metric_backbone=BACKBONES,
        lpips_weights="random",
        segmenter="random:deeplabv3_mobilenet_v3_large",
        explicit=True,
    )
    models = load_metric_models(settings, device)
    pairs = make_pairs(args.pairs, args.size)
    compute_metrics(pairs[:1], list(METRICS), models, device, 1)  # warm-up
    print(
        f"device {device}, {args.pairs} pairs of {args.size}x{args.size * 3 // 4} (appearance {args.size}x{args.size}), "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'metrics':<34} {'batch':>5} {'s/pair':>8}")
    baseline = 0.0
    for name in METRICS:
        seconds = timed(pairs, [name], models, device, 1)
        baseline += seconds
        print(f"{name:<34} {1:>5} {seconds:>8.2f}")
    print(f"{'sum of the above (baseline)':<34} {1:>5} {baseline:>8.2f}")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        seconds = timed(pairs, list(METRICS), models, device, batch_size)
        print(f"{'all five together':<34} {batch_size:>5} {seconds:>8.2f}  ({baseline / seconds:.2f}x baseline)")


if __name__ == "__main__":
    main()
