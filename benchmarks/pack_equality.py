"""Pack equality on this device: pairs trained alone vs the same pairs in packs, same seeds and settings.

    python benchmarks/pack_equality.py                       # CPU, fp32: expect <= 1e-5 relative
    python benchmarks/pack_equality.py --device cuda --precision bf16 --backbone random:vit_base_patch8_224

Prints (and with --json writes) the largest relative difference of any logged loss term and the largest difference
of the uint8 outputs, per pair. Needs torch/timm only (no Ray).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.trainer import PairInput, TrainOptions, resolve_device, train_pack, train_pair

# p1 and p3 have one size: in a pack their generators run as one grouped call (a stack); the others are stacks of one
SIZES = [((96, 128), (112, 96)), ((128, 128), (128, 128)), ((120, 100), (96, 128)), ((128, 128), (128, 128))]


def make_images(seed: int, structure_size, appearance_size):
    generator = torch.Generator().manual_seed(seed)
    structure = (torch.rand(3, *structure_size, generator=generator) * 255).to(torch.uint8)
    structure[
        :, structure_size[0] // 4 : 3 * structure_size[0] // 4, structure_size[1] // 4 : 3 * structure_size[1] // 4
    ] = 220
    appearance = (torch.rand(3, *appearance_size, generator=generator) * 255).to(torch.uint8)
    return structure, appearance


def compare(packed, alone) -> dict:
    worst = 0.0
    for row, reference in zip(packed.losses, alone.losses):
        for name, value in reference.items():
            if name != "step" and value == value and value != 0:
                worst = max(worst, abs(row[name] - value) / abs(value))
    return {
        "max_relative_loss_difference": worst,
        "max_output_difference_uint8": int((packed.output.int() - alone.output.int()).abs().max()),
        "output_pixels_differing": float((packed.output != alone.output).float().mean()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="random:vit_tiny_patch16_224")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, device)
    config = TrainConfig(
        backbone=args.backbone, steps=args.steps, log_every=1, full_image_every=5, precision=args.precision
    )
    options = TrainOptions(compile=args.compile)
    pairs = [PairInput(f"p{i}", *make_images(i, *sizes), config.replace(seed=i)) for i, sizes in enumerate(SIZES)]
    started = time.perf_counter()
    alone = {
        p.pair_id: train_pair(p.structure, p.appearance, p.config, backbone, device, options=options) for p in pairs
    }
    packs = {
        "pack of 4": train_pack(pairs, backbone, device, options=options),
        "pack of 2 of one size, reversed": train_pack([pairs[3], pairs[1]], backbone, device, options=options),
    }
    report = {
        "device": alone["p0"].meta["device_name"],
        "precision": alone["p0"].meta["precision"],
        "backbone": args.backbone,
        "steps": args.steps,
        "compile": args.compile,
        "packs": {},
    }
    for name, results in packs.items():
        report["packs"][name] = {pair_id: compare(result, alone[pair_id]) for pair_id, result in results.items()}
    report["seconds"] = time.perf_counter() - started
    worst = max(v["max_relative_loss_difference"] for pack in report["packs"].values() for v in pack.values())
    worst_output = max(v["max_output_difference_uint8"] for pack in report["packs"].values() for v in pack.values())
    report["max_relative_loss_difference"], report["max_output_difference_uint8"] = worst, worst_output
    print(
        f"pack equality on {report['device']} ({report['precision']}, {args.backbone}, {args.steps} steps): "
        f"largest relative loss difference {worst:.2e}, largest output difference {worst_output}/255"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
