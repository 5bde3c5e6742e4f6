"""Seconds per training step, split by phase, against the authors' loop structure measured in the same run.

    python benchmarks/train_step.py                                   # CPU: random ViT-S/16, 256 px pair
    python benchmarks/train_step.py --backbone random:vit_base_patch8_224 --size 1200 --device cuda

Random weights cost the same as real ones. The pair has the shape of the HD reference pair (structure 4:3,
appearance 1280x982) scaled so the structure's long side is --size.

Rows:
  production  the trainer's own step (pipeline.method.objective.splice_losses + backward + Adam), timed end to end
  breakdown   the same step with a device sync around each phase (so phases add up; slightly slower)
  authors     the structure of the authors' loop: PIL augmentation of the whole image each step, three backbone
              passes with gradient and three without, weight gradients for the frozen backbone, a full-resolution
              generator pass and PNG encode every 10 steps
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from pipeline.method.augment import sample_batch
from pipeline.method.backbone import load_backbone, self_similarity
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.objective import full_structure_target, loss_weights, splice_losses
from pipeline.method.trainer import resolve_device, resolve_precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Accumulates seconds per phase; every measurement is bracketed by device syncs."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    def time(self, phase, fn, *args):
        sync(self.device)
        started = time.perf_counter()
        out = fn(*args)
        sync(self.device)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started
        return out


class TimedGenerator(torch.nn.Module):
    def __init__(self, generator, clock):
        super().__init__()
        self.generator, self.clock = generator, clock

    def forward(self, x):
        return self.clock.time("generator", self.generator, x)


class TimedBackbone:
    """Exposes what splice_losses uses (prepare, last_block), timing the backbone's forward passes."""

    def __init__(self, backbone, clock):
        self.backbone, self.clock = backbone, clock

    def prepare(self, *args):
        return self.backbone.prepare(*args)

    def last_block(self, pixels):
        return self.clock.time("backbone", self.backbone.last_block, pixels)


def make_pair(size: int, device):
    generator = torch.Generator().manual_seed(0)
    structure = torch.rand(1, 3, round(size * 900 / 1200), size, generator=generator)
    appearance = torch.rand(1, 3, round(size * 982 / 1200), round(size * 1280 / 1200), generator=generator)
    return structure.to(device), appearance.to(device)


def production_steps(backbone, structure, appearance, config, device, precision, steps, clock=None):
    generator = SkipGenerator().to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    rng = random.Random(0)
    model = TimedGenerator(generator, clock) if clock else generator
    features = TimedBackbone(backbone, clock) if clock else backbone
    full_target = full_structure_target(backbone, structure, precision)
    times = []
    for step in range(steps):
        sync(device)
        started = time.perf_counter()
        weights = loss_weights(step, config)
        if clock:
            batch = clock.time("augmentation", sample_batch, rng, structure, appearance, config, weights.full_image)
            terms = splice_losses(model, features, batch, weights, full_target, precision)
            clock.time("backward", terms["total"].backward)
            clock.time("optimiser", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
        else:
            batch = sample_batch(rng, structure, appearance, config, weights.full_image)
            terms = splice_losses(model, features, batch, weights, full_target, precision)
            terms["total"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def authors_steps(backbone, structure, appearance, config, device, steps):
    """The authors' loop structure (see module docstring), on the same images and backbone."""
    backbone.requires_grad_(True)  # their extractor was not frozen for autograd
    generator = SkipGenerator().to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    to_pil = T.ToPILImage()
    structure_pil, appearance_pil = to_pil(structure[0].cpu()), to_pil(appearance[0].cpu())
    rng = random.Random(0)

    def crop(image):  # the same square crop rule, on a PIL image
        side = min(int(rng.uniform(0.95 * image.height, image.height)), image.width)
        top, left = rng.randint(0, image.height - side), rng.randint(0, image.width - side)
        return image.crop((left, top, left + side, top + side))

    structure_aug = T.Compose(
        [
            crop,
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.5),
            T.RandomApply([T.GaussianBlur(3)], p=0.2),
            T.ToTensor(),
        ]
    )
    appearance_aug = T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor()])

    def feats(image):
        return backbone.last_block(backbone.prepare(image))  # square crops: 224x224

    times = []
    for step in range(steps):
        sync(device)
        started = time.perf_counter()
        a = structure_aug(structure_pil)[None].to(device)
        b = appearance_aug(appearance_pil)[None].to(device)
        x, y = generator(a), generator(b)
        with torch.no_grad():
            target_selfsim = self_similarity(feats(a).keys)
            target_cls = feats(b).cls_token
            target_keys = feats(b).keys
        loss = 10 * F.mse_loss(feats(x).cls_token, target_cls)
        if step > 0:
            loss = (
                loss
                + F.mse_loss(self_similarity(feats(x).keys), target_selfsim)
                + F.mse_loss(feats(y).keys, target_keys)
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0:  # their loop renders and saves the full-resolution result every 10 steps
            with torch.no_grad():
                full = generator(structure)
            to_pil(full[0].clamp(0, 1).cpu()).save(io.BytesIO(), format="PNG")
        sync(device)
        times.append(time.perf_counter() - started)
    backbone.requires_grad_(False)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="random:vit_small_patch16_224")
    parser.add_argument("--size", type=int, default=256, help="structure image long side (HD reference: 1200)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=20, help="measured steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    backbone = load_backbone(args.backbone, device)
    config = TrainConfig(backbone=args.backbone, precision=args.precision)
    structure, appearance = make_pair(args.size, device)
    total = args.warmup + args.steps
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"{torch.get_num_threads()} threads), backbone {args.backbone}, precision {precision}, "
        f"structure {tuple(structure.shape[-2:])}, appearance {tuple(appearance.shape[-2:])}, {args.steps} steps after {args.warmup} warm-up"
    )

    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = production_steps(backbone, structure, appearance, config, device, precision, total)[args.warmup :]
    rows.append(("production", times, {}, _peak(device)))
    clock = PhaseClock(device)
    times = production_steps(backbone, structure, appearance, config, device, precision, args.warmup, clock)
    clock.seconds.clear()
    times = production_steps(backbone, structure, appearance, config, device, precision, args.steps, clock)
    rows.append(("breakdown", times, {k: v / args.steps for k, v in clock.seconds.items()}, _peak(device)))
    if not args.no_baseline:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = authors_steps(backbone, structure, appearance, config, device, total)[args.warmup :]
        rows.append(("authors", times, {}, _peak(device)))

    phases = ["augmentation", "generator", "backbone", "backward", "optimiser"]
    print(f"\n| loop | median s/step | mean s/step | {' | '.join(phases)} | peak GPU mem |")
    print("|---|---|---|" + "---|" * len(phases) + "---|")
    for name, times, split, peak in rows:
        cells = [f"{split[p]:.4f}" if p in split else "" for p in phases]
        print(
            f"| {name} | {statistics.median(times):.4f} | {statistics.mean(times):.4f} | {' | '.join(cells)} | {peak} |"
        )
    if not args.no_baseline:
        speedup = statistics.median(rows[-1][1]) / statistics.median(rows[0][1])
        print(f"\nproduction is {speedup:.2f}x the authors' loop structure (median s/step)")


def _peak(device) -> str:
    if device.type != "cuda":
        return "n/a (cpu)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


if __name__ == "__main__":
    main()
