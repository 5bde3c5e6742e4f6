"""How a metric sees an image of a pair: named views, each a pure function of (pair, image) -> (3, h, w) float in
[0, 1] on the CPU. A metric's `Need` names one (evaluation.registry); the engine prepares each view of each image
once per pair, whatever number of metrics use it.

  protocol          the published protocol's input: PIL bilinear to 512x512, then Resize(224, max_size=480)
  native            the image at its own aspect ratio, at its backbone input size (resized as training does)
  structure_native  the image at the structure image's size first, then at that size's backbone input size
  structure_small   the image at the structure image's size, downscaled so the long side is <= SMALL_SIDE
  structure_size    the image at the structure image's size
  full              the image as stored
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.method.backbone import backbone_input_size, resize_for_backbone

SMALL_SIDE = 512  # LPIPS and segmentation compare at the structure size, long side capped at this
PROTOCOL_SIDE = 512  # the published protocol first resizes every image to this square with PIL bilinear

VIEWS: dict[str, Callable] = {}  # name -> fn(pair, image) -> (3, h, w) float in [0, 1]


def register_view(name: str):
    def decorate(fn: Callable) -> Callable:
        VIEWS[name] = fn
        return fn

    return decorate


# --- sizes -------------------------------------------------------------------------------------------------


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of (B, 3, H, W) floats, the same operation `DinoBackbone.prepare` uses."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def small_size(height: int, width: int, max_side: int = SMALL_SIDE) -> tuple[int, int]:
    """Working size of LPIPS and segmentation: the image's size, downscaled so the long side is <= max_side."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def vit_size(height: int, width: int) -> tuple[int, int]:
    """Backbone input size (as for training): torchvision's Resize(224, max_size=480) rule."""
    return backbone_input_size(height, width)


def protocol_image(image: torch.Tensor) -> torch.Tensor:
    """The published protocol's input: (3, H, W) uint8 -> (3, 224, 224) float in [0, 1], before normalisation.

    PIL bilinear to 512x512 (on the 8-bit image, as the protocol reads files with PIL), ToTensor, then torchvision's
    Resize(224, max_size=480), antialiased. `DinoBackbone.prepare` then only normalises it (a 224x224 square is
    already at its backbone size, the pretrained grid: no position-embedding interpolation)."""
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).resize(
        (PROTOCOL_SIDE, PROTOCOL_SIDE), Image.BILINEAR
    )
    tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)  # ToTensor
    return resize_for_backbone(tensor[None], antialias=True)[0]


# --- the views -----------------------------------------------------------------------------------------------


def _unit(image: torch.Tensor) -> torch.Tensor:
    return image.float()[None] / 255  # (1, 3, H, W)


def _at_structure_size(pair, image: str) -> torch.Tensor:
    return resize(_unit(getattr(pair, image)), tuple(pair.structure.shape[-2:]))


@register_view("protocol")
def protocol(pair, image: str) -> torch.Tensor:
    return protocol_image(getattr(pair, image))


@register_view("native")
def native(pair, image: str) -> torch.Tensor:
    unit = _unit(getattr(pair, image))
    return resize(unit, vit_size(*unit.shape[-2:]))[0]


@register_view("structure_native")
def structure_native(pair, image: str) -> torch.Tensor:
    at_structure = _at_structure_size(pair, image)
    return resize(at_structure, vit_size(*at_structure.shape[-2:]))[0]


@register_view("structure_small")
def structure_small(pair, image: str) -> torch.Tensor:
    at_structure = _at_structure_size(pair, image)
    return resize(at_structure, small_size(*at_structure.shape[-2:]))[0]


@register_view("structure_size")
def structure_size(pair, image: str) -> torch.Tensor:
    return _at_structure_size(pair, image)[0]


@register_view("full")
def full(pair, image: str) -> torch.Tensor:
    return _unit(getattr(pair, image))[0]
