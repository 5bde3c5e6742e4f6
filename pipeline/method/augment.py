"""Per-step augmentation on device tensors.

Every random parameter is drawn on the host from a seeded `random.Random`, so augmenting never synchronises
with the device and a run is reproducible (and resumable: the generator's state goes into checkpoints).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from pipeline.method.config import TrainConfig


@dataclass(frozen=True)
class StepBatch:
    structure_crop: torch.Tensor  # (1, 3, s, s) augmented square crop of the structure image, in [0, 1]
    appearance_crop: torch.Tensor  # (1, 3, s', s') augmented square crop of the appearance image, in [0, 1]
    structure_full: torch.Tensor | None  # (1, 3, H, W) the whole un-augmented structure image, on full-image steps


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
    rng: random.Random, structure: torch.Tensor, appearance: torch.Tensor, config: TrainConfig, include_full: bool
) -> StepBatch:
    """One step's inputs from the whole images (each (1, 3, H, W) in [0, 1], already on the device)."""
    return StepBatch(
        structure_crop=augment_structure(rng, structure, config),
        appearance_crop=augment_appearance(rng, appearance, config),
        structure_full=structure if include_full else None,
    )
