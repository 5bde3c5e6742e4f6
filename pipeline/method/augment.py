"""Per-step augmentation on device tensors, for one pair or a group of same-size pairs at once.

Every random parameter is drawn on the host from a seeded `random.Random`, so augmenting never synchronises
with the device and a run is reproducible (and resumable: the generator's state goes into checkpoints).

Crop sides (the crop-shape schedule, `TrainConfig.crop_schedule`):
- schedule 2 (the default): the side at step t is drawn from (schedule seed, t, image size) alone, uniform in
  [fraction * h, h] as before, so pairs of one image size at one step share their crop shapes and their generators
  run as one grouped call. Position, flip, colour jitter and blur stay per pair, from the pair's own RNG, in the
  order they always had; a pair's result still does not depend on its pack (the side depends only on its own size
  and step). Equal in distribution to schedule 1, not draw by draw (docs/performance.md, "Crop-shape schedule").
- schedule 1 (runs made before it): the side is the first draw of each crop from the pair's own RNG.

`sample_group` draws every pair's parameters on the host, in that per-pair order, then applies each kind of
augmentation to the whole group in one call: one indexed gather for the crops (flips included), one call per
colour adjustment with per-sample factors (torchvision's formulas), one grouped convolution for the blur.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from pipeline.method.config import TrainConfig

SHARED_SCHEDULE = 2  # TrainConfig.crop_schedule: the crop side from (schedule seed, step, image size)
PER_PAIR_SCHEDULE = 1  # ... from the pair's own RNG (runs made before the shared schedule)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's adjustments, in the order their factors are drawn


@dataclass(frozen=True)
class StepBatch:
    structure_crop: torch.Tensor  # (G, 3, s, s) augmented square crops of the structure images, in [0, 1]
    appearance_crop: torch.Tensor  # (G, 3, s', s') augmented square crops of the appearance images, in [0, 1]
    structure_full: torch.Tensor | None  # (G, 3, H, W) the whole un-augmented structure images, on full-image steps


@dataclass(frozen=True)
class CropDraw:
    """One crop's host-side draws: a square of `side` at (top, left), mirrored if `flip`; for a structure crop also
    the colour jitter ((adjustment, factor) in the order applied, or None) and the blur's sigma (or None)."""

    side: int
    top: int
    left: int
    flip: bool
    jitter: tuple[tuple[int, float], ...] | None = None
    blur_sigma: float | None = None


def crop_side(
    rng: random.Random, config: TrainConfig, step: int, height: int, width: int, min_fraction: float | None = None
) -> int:
    """The square crop's side at `step` for an image of height x width: uniform in [fraction * h, h], capped at the
    width; from the schedule (shared by every pair of that size) or, under schedule 1, from the pair's `rng`."""
    fraction = config.crop_min_fraction if min_fraction is None else min_fraction
    if getattr(config, "crop_schedule", PER_PAIR_SCHEDULE) == SHARED_SCHEDULE:
        rng = random.Random(f"splice-crop-side/{config.crop_schedule_seed}/{step}/{height}x{width}")
    return min(int(round(rng.uniform(fraction * height, height))), width)


def draw_structure(rng: random.Random, config: TrainConfig, step: int, size: tuple[int, int]) -> CropDraw:
    """The structure crop's draws, in the order the per-pair augmentation always drew them."""
    height, width = size
    side = crop_side(rng, config, step, height, width)
    top, left = rng.randint(0, height - side), rng.randint(0, width - side)
    flip = rng.random() < config.flip_p
    jitter = blur = None
    if rng.random() < config.jitter_p:
        brightness, contrast, saturation, hue = config.jitter
        factors = [
            (BRIGHTNESS, rng.uniform(max(0.0, 1 - brightness), 1 + brightness)),
            (CONTRAST, rng.uniform(max(0.0, 1 - contrast), 1 + contrast)),
            (SATURATION, rng.uniform(max(0.0, 1 - saturation), 1 + saturation)),
            (HUE, rng.uniform(-hue, hue)),
        ]
        rng.shuffle(factors)
        jitter = tuple(factors)
    if rng.random() < config.blur_p:
        blur = rng.uniform(0.1, 2.0)  # torchvision GaussianBlur's default sigma range
    return CropDraw(side, top, left, flip, jitter, blur)


def draw_appearance(rng: random.Random, config: TrainConfig, step: int, size: tuple[int, int]) -> CropDraw:
    height, width = size
    side = crop_side(rng, config, step, height, width)
    top, left = rng.randint(0, height - side), rng.randint(0, width - side)
    return CropDraw(side, top, left, rng.random() < config.flip_p)


def sample_group(
    rngs: Sequence[random.Random],
    structures: torch.Tensor,
    appearances: torch.Tensor,
    configs: Sequence[TrainConfig],
    step: int,
    include_full: bool,
) -> StepBatch:
    """One step's inputs for G pairs of one structure size and one appearance size at one step.

    structures (G, 3, H, W), appearances (G, 3, H', W') in [0, 1] on the device; rngs and configs per pair. Their
    crop sides must agree (the shared schedule, or a group of one)."""
    structure_draws, appearance_draws = [], []
    for rng, config in zip(rngs, configs):  # per pair, the structure's draws then the appearance's, as always
        structure_draws.append(draw_structure(rng, config, step, tuple(structures.shape[-2:])))
        appearance_draws.append(draw_appearance(rng, config, step, tuple(appearances.shape[-2:])))
    structure = crop_group(structures, structure_draws)
    structure = jitter_group(structure, structure_draws)
    structure = blur_group(structure, structure_draws)
    return StepBatch(
        structure_crop=structure,
        appearance_crop=crop_group(appearances, appearance_draws),
        structure_full=structures if include_full else None,
    )


def crop_group(images: torch.Tensor, draws: Sequence[CropDraw]) -> torch.Tensor:
    """(G, 3, H, W) -> (G, 3, s, s): every image's square crop (mirrored where drawn), as one indexed gather."""
    sides = {draw.side for draw in draws}
    if len(sides) != 1:
        raise ValueError(f"crops of one group must share their side, got {sorted(sides)}")
    side = sides.pop()
    if len(draws) == 1:  # one image: a view and at most one flip, as the per-pair path does
        draw = draws[0]
        crop = images[..., draw.top : draw.top + side, draw.left : draw.left + side]
        return torch.flip(crop, dims=[-1]) if draw.flip else crop
    offsets = range(side)
    rows = [[draw.top + i for i in offsets] for draw in draws]
    cols = [[draw.left + (side - 1 - i if draw.flip else i) for i in offsets] for draw in draws]
    device = images.device
    rows_t = torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)  # (G, s)
    cols_t = torch.tensor(cols, dtype=torch.long).to(device, non_blocking=True)  # (G, s)
    batch = torch.arange(len(draws), device=device).view(-1, 1, 1)
    crops = images.permute(0, 2, 3, 1)[batch, rows_t.unsqueeze(-1), cols_t.unsqueeze(1)]  # (G, s, s, 3)
    return crops.permute(0, 3, 1, 2).contiguous()


def jitter_group(images: torch.Tensor, draws: Sequence[CropDraw]) -> torch.Tensor:
    """torchvision's ColorJitter per image, with each image's own factors and order: at each of the four positions,
    one call per adjustment over the images that apply it there."""
    jittered = [i for i, draw in enumerate(draws) if draw.jitter is not None]
    if not jittered:
        return images
    every = len(jittered) == len(draws)
    subset = images if every else images[jittered]
    for position in range(4):
        kinds = [draws[i].jitter[position] for i in jittered]
        for kind in sorted({k for k, _ in kinds}):
            members = [n for n, (k, _) in enumerate(kinds) if k == kind]
            factors = [kinds[n][1] for n in members]
            if len(members) == len(jittered):
                subset = _ADJUST[kind](subset, factors)
            else:
                subset = subset.clone() if subset is images else subset
                subset[members] = _ADJUST[kind](subset[members], factors)
    if every:
        return subset
    images = images.clone()
    images[jittered] = subset
    return images


def blur_group(images: torch.Tensor, draws: Sequence[CropDraw]) -> torch.Tensor:
    """torchvision's 3x3 Gaussian blur (reflect padding) per image with its own sigma: one grouped convolution."""
    blurred = [i for i, draw in enumerate(draws) if draw.blur_sigma is not None]
    if not blurred:
        return images
    kernels = torch.tensor([_gaussian_kernel(draws[i].blur_sigma) for i in blurred])  # (B, 3, 3), from the host
    subset = images if len(blurred) == len(draws) else images[blurred]
    count, channels, height, width = subset.shape
    weight = kernels.to(subset.device, subset.dtype).repeat_interleave(channels, dim=0).unsqueeze(1)  # (3B, 1, 3, 3)
    padded = F.pad(subset.reshape(1, count * channels, height, width), [1, 1, 1, 1], mode="reflect")
    out = F.conv2d(padded, weight, groups=count * channels).reshape(count, channels, height, width)
    if len(blurred) == len(draws):
        return out
    images = images.clone()
    images[blurred] = out
    return images


def _gaussian_kernel(sigma: float) -> list[list[float]]:
    """torchvision's 3x3 Gaussian kernel for `sigma` (softmax of -(x / sigma)^2 at x = -lim, 0, lim, outer product),
    computed on the host in Python: no device op per image."""
    lim = (3 - 1) / (2.0 * math.sqrt(2.0))
    edge = math.exp(-((lim / sigma) ** 2))
    weights = [edge / (1 + 2 * edge), 1 / (1 + 2 * edge), edge / (1 + 2 * edge)]
    return [[row * col for col in weights] for row in weights]


def _per_image(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype).to(like.device, non_blocking=True).view(-1, 1, 1, 1)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (images * ratio + other * (1.0 - ratio)).clamp_(0, 1)


def _brightness(images: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    return images.mul(_per_image(factors, images)).clamp_(0, 1)


def _contrast(images: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    mean = torch.mean(_grayscale(images), dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, _per_image(factors, images))


def _saturation(images: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    return _blend(images, _grayscale(images), _per_image(factors, images))


def _hue(images: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(images).unbind(dim=-3)
    h = (h + _per_image(factors, images).view(-1, 1, 1)).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


_ADJUST = {BRIGHTNESS: _brightness, CONTRAST: _contrast, SATURATION: _saturation, HUE: _hue}


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's (v2) RGB -> HSV on float images (..., 3, H, W)."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / divisor).unbind(dim=-3)
    not_r = maxc != r
    is_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(is_g & not_r)
    hr = bc.sub_(gc).mul_(~not_r)
    hb = gc.add_(4.0).sub_(rc).mul_(not_r.logical_and_(is_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """torchvision's (v2) HSV -> RGB."""
    h, s, v = image.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32).remainder_(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = _HSV_SELECT.to(device=image.device, non_blocking=True)[:, i]  # (3, B, H, W)
    return vpqt.gather(-3, select.moveaxis(0, -3))


_HSV_SELECT = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=torch.long)


# --- per image, with torchvision: SpliceNet's per-sample batches, and the reference the group path is tested against


def square_crop(rng: random.Random, image: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """A square crop with side uniform in [min_fraction * h, h], capped at the width; position uniform."""
    height, width = image.shape[-2:]
    side = min(int(round(rng.uniform(min_fraction * height, height))), width)
    top = rng.randint(0, height - side)
    left = rng.randint(0, width - side)
    return image[..., top : top + side, left : left + side]


def maybe_flip(rng: random.Random, image: torch.Tensor, p: float) -> torch.Tensor:
    return torch.flip(image, dims=[-1]) if rng.random() < p else image


def color_jitter(rng: random.Random, image: torch.Tensor, strengths: tuple[float, float, float, float]) -> torch.Tensor:
    """torchvision's ColorJitter on a tensor: factors drawn on the host, the four adjustments in random order."""
    brightness, contrast, saturation, hue = strengths
    adjustments = [
        (TF.adjust_brightness, rng.uniform(max(0.0, 1 - brightness), 1 + brightness)),
        (TF.adjust_contrast, rng.uniform(max(0.0, 1 - contrast), 1 + contrast)),
        (TF.adjust_saturation, rng.uniform(max(0.0, 1 - saturation), 1 + saturation)),
        (TF.adjust_hue, rng.uniform(-hue, hue)),
    ]
    rng.shuffle(adjustments)
    for adjust, factor in adjustments:
        image = adjust(image, factor)
    return image


def gaussian_blur(rng: random.Random, image: torch.Tensor) -> torch.Tensor:
    sigma = rng.uniform(0.1, 2.0)  # torchvision GaussianBlur's default sigma range
    return TF.gaussian_blur(image, kernel_size=[3, 3], sigma=[sigma, sigma])


def augment_structure(rng: random.Random, image: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    crop = maybe_flip(rng, square_crop(rng, image, config.crop_min_fraction), config.flip_p)
    if rng.random() < config.jitter_p:
        crop = color_jitter(rng, crop, config.jitter)
    if rng.random() < config.blur_p:
        crop = gaussian_blur(rng, crop)
    return crop


def augment_appearance(rng: random.Random, image: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    return maybe_flip(rng, square_crop(rng, image, config.crop_min_fraction), config.flip_p)


def sample_batch(
    rng: random.Random,
    structure: torch.Tensor,
    appearance: torch.Tensor,
    config: TrainConfig,
    include_full: bool,
    step: int = 0,
) -> StepBatch:
    """One pair's inputs for `step` from its whole images (each (1, 3, H, W) in [0, 1], already on the device): a
    group of one."""
    return sample_group([rng], structure, appearance, [config], step, include_full)
