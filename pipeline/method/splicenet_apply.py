"""Applying a trained SpliceNet to pairs: [CLS] codes, the appearance-strength mix, batched forward passes.

The transfer only: the net, the backbone and the images come from the caller (the method's fan-out hooks are
pipeline/method/splicenet_batched.py, the checkpoint file pipeline/method/splicenet.py). No Ray and no storage here.

Choices the papers leave open, made here:
- Inference resolution: `short_side` (None: each structure's own size; see splicenet_batched.py).
- [CLS] codes come from the backbone the checkpoint names (its feature space is the one the net was trained on), at
  the backbone's own input size: each image, after --max-side, resized as `Resize(224, max_size=480)` exactly as in
  training and evaluation; the [CLS] of the last block before the final norm, as Splice's appearance descriptor.
- Appearance strength t (the journal's appearance interpolation): the net gets (1 - t) * cls(structure) +
  t * cls(appearance); t = 1 (default) is plain transfer, t = 0 the structure's own code. Only the codes a given
  t needs are computed (t = 1 needs no structure code).
- Batching: a task's pack of pairs goes through the backbone in as few passes as there are distinct image sizes, and
  through the net in one forward pass per distinct structure size (at most `max_batch` pairs per pass).
- Precision: the run's `precision` (auto: bf16 autocast on CUDA, fp32 on CPU, where outputs are bit-for-bit
  deterministic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.method.backbone import DinoBackbone

GPU_PACK = 32  # pairs per task (and per forward pass) on a GPU when --pack is auto; see benchmarks/splicenet.py
CODE_BATCH = 64  # images per backbone pass when computing [CLS] codes
PIXELS_PER_PASS = 32 * 512 * 512  # at most this many structure pixels per forward pass: 32 at 512x512, 7 HD images


# --- codes -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def cls_codes(
    backbone: DinoBackbone,
    images: list[torch.Tensor],
    device: torch.device,
    *,
    antialias: bool = True,
    dtype: torch.dtype = torch.float32,
    batch: int = CODE_BATCH,
) -> torch.Tensor:
    """[CLS] codes (N, D) float32 of (3, H, W) uint8 images, each resized to the backbone's input for its own size
    (one at a time: full-size images never stack up); images of equal input size share a backbone pass."""
    prepared = [
        backbone.prepare(image[None].to(device=device, dtype=torch.float32) / 255.0, antialias)[0] for image in images
    ]  # (3, h, w) each, normalised
    codes: list[torch.Tensor | None] = [None] * len(images)
    for indices in _groups([tuple(pixels.shape[-2:]) for pixels in prepared], batch):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            cls = backbone.last_block(torch.stack([prepared[i] for i in indices])).cls_token  # (B, D)
        for i, code in zip(indices, cls.float()):
            codes[i] = code
    return torch.stack(codes)


def appearance_codes(
    backbone: DinoBackbone,
    structures: list[torch.Tensor],
    appearances: list[torch.Tensor],
    strength: float,
    device: torch.device,
    **options,
) -> torch.Tensor:
    """What the net is fed: (1 - t) * cls(structure) + t * cls(appearance), (N, D); only the codes t needs."""
    if strength == 1.0:
        return cls_codes(backbone, appearances, device, **options)
    if strength == 0.0:
        return cls_codes(backbone, structures, device, **options)
    codes = cls_codes(backbone, structures + appearances, device, **options)  # one pass where sizes agree
    structure, appearance = codes[: len(structures)], codes[len(structures) :]
    return (1.0 - strength) * structure + strength * appearance


# --- the net ---------------------------------------------------------------------------------------------------


def net_input_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """The size the net runs at for a structure of `size`: itself, or scaled so its short side is `short_side`."""
    if not short_side or min(size) == short_side:
        return tuple(size)
    scale = short_side / min(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@torch.no_grad()
def transfer(
    net: nn.Module,
    backbone: DinoBackbone,
    structures: list[torch.Tensor],
    appearances: list[torch.Tensor],
    device: torch.device,
    *,
    strength: float = 1.0,
    short_side: int | None = None,
    precision: torch.dtype = torch.float32,
    antialias: bool = True,
    max_batch: int = GPU_PACK,
) -> list[torch.Tensor]:
    """SpliceNet outputs, (3, H, W) uint8 at each structure's size, for (3, H, W) uint8 structure/appearance images.

    1. the codes (see `appearance_codes`), 2. pairs grouped by the net's input size, 3. one forward pass per group
    of at most `max_batch` (and PIXELS_PER_PASS pixels), 4. back to each structure's size and to uint8."""
    codes = appearance_codes(
        backbone, structures, appearances, strength, device, antialias=antialias, dtype=precision
    )  # (N, D)
    outputs: list[torch.Tensor | None] = [None] * len(structures)
    sizes = [net_input_size(tuple(s.shape[-2:]), short_side) for s in structures]
    for indices in _groups(sizes, max_batch, pixels=PIXELS_PER_PASS):
        batch = torch.stack([_resized(structures[i], sizes[i]) for i in indices]).to(device)  # (B, 3, h, w) in [0, 1]
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            result = net(batch, codes[indices].to(device)).float()  # (B, 3, h, w) in [0, 1]
        for i, image in zip(indices, result):
            target = tuple(structures[i].shape[-2:])
            if tuple(image.shape[-2:]) != target:
                image = F.interpolate(image[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0]
            outputs[i] = image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return outputs


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, *size) float in [0, 1] (antialiased bilinear where the size changes)."""
    pixels = image.float() / 255.0
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def _groups(keys: list, batch: int, pixels: int | None = None) -> list[torch.Tensor]:
    """Indices of equal keys together, in chunks of at most `batch` (and, for (h, w) keys, of at most `pixels`
    pixels, one at least), in first-seen order."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    chunks = []
    for key, members in groups.items():
        size = max(1, min(batch, pixels // (key[0] * key[1]))) if pixels else max(1, batch)
        chunks += [torch.tensor(members[i : i + size]) for i in range(0, len(members), size)]
    return chunks
