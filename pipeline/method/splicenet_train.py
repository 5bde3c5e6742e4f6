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

import dataclasses
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.method.augment import augment_appearance, augment_structure
from pipeline.method.objective import LossWeights

CURATE_MODES = ("none", "centre")


@dataclass(frozen=True)
class NetTrainConfig:
    backbone: str = "dino_vitb8"  # backbone spec (the paper: DINO ViT-B/8); its [CLS] size sets the code size
    resolution: int = 256  # side of the square training crops fed to the network
    batch: int = 16  # pairs per step, over all workers together (the global batch)
    steps: int = 20000  # optimisation steps
    lr: float = 2e-3  # Adam learning rate, constant (paper)
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas (paper)
    appearance_weight: float = 1.0  # weight of the [CLS] appearance term (paper: 1)
    structure_weight: float = 2.0  # weight of the self-similarity structure term (paper: alpha = 2)
    identity_weight: float = 0.1  # weight of the keys identity term (paper: beta = 0.1)
    crop_min_fraction: float = 0.95  # square crop side uniform in [fraction * h, h], both images (paper: 95%)
    flip_p: float = 0.5  # horizontal flip probability, both images (paper)
    jitter_p: float = 0.2  # colour jitter probability, structure image (paper)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    blur_p: float = 0.1  # 3x3 Gaussian blur probability, structure image (paper)
    width: float = 1.0  # SpliceNet channel multiplier (1: the paper's 64..1024)
    demodulate: bool = True  # StyleGAN2 demodulation in the modulated convs
    domains: tuple[str, ...] = ()  # manifest domains to train on (empty: every domain in the manifest)
    curate: str = "none"  # none | centre: drop images whose [CLS] is far from their domain's mean (see curate_keep)
    curate_keep: float = 0.9  # with curate=centre: the fraction of each domain's images kept, nearest its mean
    seed: int = 0  # seeds the network's initialisation, the pairs and the augmentation
    precision: str = "auto"  # auto (bf16 backbone on CUDA, fp32 on CPU) | fp32 | bf16
    log_every: int = 50  # record the losses (one host sync) every N steps
    checkpoint_every: int = 1000  # write a resumable checkpoint (and net.pt) every N steps
    max_pixels: int = 40_000_000  # refuse images above this many pixels (decompression-bomb guard)

    def __post_init__(self):
        problems = []
        for name in ("resolution", "batch", "steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.curate not in CURATE_MODES:
            problems.append(f"curate must be one of {', '.join(CURATE_MODES)}, got {self.curate!r}")
        if not 0 < self.curate_keep <= 1:
            problems.append(f"curate_keep must be in (0, 1], got {self.curate_keep}")
        if not 0 < self.crop_min_fraction <= 1:
            problems.append(f"crop_min_fraction must be in (0, 1], got {self.crop_min_fraction}")
        if not self.width > 0:
            problems.append(f"width must be > 0, got {self.width}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SpliceNet training option(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        for name in ("betas", "jitter", "domains"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def replace(self, **changes) -> NetTrainConfig:
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def loss_weights(self) -> LossWeights:
        """Constant over training; the per-pair schedule (step 0, full image every 75 steps) does not apply."""
        return LossWeights(
            appearance=self.appearance_weight,
            structure=self.structure_weight,
            identity=self.identity_weight,
            full_appearance=0.0,
            full_structure=0.0,
        )


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
