"""Training SpliceNet, the parts that know nothing of Ray or storage: settings, pairs, crops, one step.

A step draws `batch` random (structure, appearance) pairs from the image pools of the training domains, augments
each pair as the authors do (structure: 95% crop, flip 0.5, colour jitter 0.2, 3x3 blur 0.1; appearance: 95%
crop, flip 0.5), resizes the square crops to `resolution`, and takes one Adam step on the Splice crop terms of all
pairs through ONE batched generator call and the objective's two shared backbone passes
(`objective.conditioned_losses`).

Reproducible whatever the hardware split: the pairs of step s are a pure function of (seed, s), and sample i's
augmentation of (seed, s, i); a worker draws the whole step's pairs and augments only its slice. So W workers with
the same global batch compute the same samples as one worker (DDP averages their gradients, which equals the
global batch mean), and a checkpoint needs no RNG state: resuming at step s recomputes exactly what was left.

Defaults the papers leave open (see docs/splicenet.md for the reasoning): resolution 256 (the backbone sees every
crop at 224, so the loss cannot see finer detail; 256 is the next multiple of 32), batch 16 pairs, 20000 steps,
a checkpoint every 1000 steps, losses logged every 50.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from pipeline.method.augment import augment_appearance, augment_structure
from pipeline.method.splicenet_config import CURATE_MODES, NetTrainConfig  # noqa: F401 (the settings, for callers)


def draw_pairs(seed: int, step: int, batch: int, pools: list[list[int]]) -> list[tuple[int, int]]:
    """The step's `batch` (structure, appearance) image indices: a structure image uniform over all images, an
    appearance image uniform over the other images of its domain. A pure function of (seed, step)."""
    rng = random.Random(f"splicenet-pairs:{seed}:{step}")
    owners = [(pool, position) for pool in pools for position in range(len(pool))]
    pairs = []
    for _ in range(batch):
        pool, position = owners[rng.randrange(len(owners))]
        other = rng.randrange(len(pool) - 1) if len(pool) > 1 else 0
        other += other >= position and len(pool) > 1  # skip the structure image itself
        pairs.append((pool[position], pool[other]))
    return pairs


def worker_slice(batch: int, rank: int, world: int) -> range:
    """The global sample indices of a step that worker `rank` of `world` computes (contiguous, sizes differ by <= 1)."""
    return range(rank * batch // world, (rank + 1) * batch // world)


def pool_image(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """(3, H, W) uint8 -> shrunk (antialiased) so its short side is `resolution`; never enlarged. What a worker keeps."""
    height, width = image.shape[-2:]
    if min(height, width) <= resolution:
        return image
    scale = resolution / min(height, width)
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def sample_crops(
    seed: int,
    step: int,
    samples: range,
    pairs: list[tuple[int, int]],
    images: dict[int, torch.Tensor],
    config: NetTrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented crops of the step's `samples` (global indices into `pairs`) -> structure, appearance, each
    (len(samples), 3, resolution, resolution) floats in [0, 1]. Sample i's randomness is a function of (seed, step, i)."""
    structures, appearances = [], []
    for sample in samples:
        rng = random.Random(f"splicenet-augment:{seed}:{step}:{sample}")
        structure_index, appearance_index = pairs[sample]
        structure = images[structure_index].to(device=device, dtype=torch.float32).div(255)[None]  # (1, 3, H, W)
        appearance = images[appearance_index].to(device=device, dtype=torch.float32).div(255)[None]
        structures.append(_to_side(augment_structure(rng, structure, config), config.resolution))
        appearances.append(_to_side(augment_appearance(rng, appearance, config), config.resolution))
    return torch.cat(structures), torch.cat(appearances)


def _to_side(crop: torch.Tensor, side: int) -> torch.Tensor:
    """A square crop (1, 3, s, s) resized to (1, 3, side, side)."""
    if crop.shape[-1] == side and crop.shape[-2] == side:
        return crop.contiguous()
    return F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
