"""Decoding input images into tensors, once, with clear errors.

Every input goes through `decode_image`: EXIF orientation applied, any mode (grayscale, RGBA, palette, 16-bit)
converted to 8-bit RGB, and a pixel-count guard checked from the header before any pixel is decoded, so a
decompression bomb never reaches memory.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import SpliceError
from pipeline.method.config import DEFAULT_MAX_PIXELS

BYTES_PER_PIXEL_CAP = 8  # 16-bit RGBA stored uncompressed: the most bytes per pixel a sane image file holds
HEADER_ALLOWANCE = 1 << 20  # metadata (EXIF, ICC profiles, thumbnails) on top


class ImageError(SpliceError, ValueError):
    """An input image that cannot be used; the message names the image and what to do."""


def max_input_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The byte cap of one input image file, derived from the pixel cap (--max-input-bytes overrides it)."""
    return max_pixels * BYTES_PER_PIXEL_CAP + HEADER_ALLOWANCE


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode encoded image bytes into a (3, H, W) uint8 RGB tensor. `name` is only used in error messages."""
    if not data:
        raise ImageError(f"image {name} is empty (0 bytes): replace it with a JPEG, PNG or WebP file")
    # 1. open lazily: only the header is read here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(
            f"image {name} is not a readable image ({_reason(exc)}): use a JPEG, PNG or WebP file"
        ) from exc
    # 2. guard the pixel count before decoding
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image {name} has {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f}: downscale it, or raise --max-pixels if it is trusted"
        )
    if width == 0 or height == 0:
        raise ImageError(f"image {name} has no pixels ({width}x{height})")
    # 3. decode fully (truncated files fail here), then orientation and colour
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        array = _to_rgb8(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image {name} is not a readable image ({_reason(exc)}): re-export or replace it") from exc
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def encode_png(image: torch.Tensor) -> bytes:
    """Encode a (3, H, W) uint8 tensor (any device) as PNG bytes."""
    array = image.detach().to("cpu").permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def read_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode a local image file; a missing or unreadable file is an `ImageError` naming it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"image {path} cannot be read ({exc.strerror or exc}): check the path") from exc
    return decode_image(data, path, max_pixels)


def downscale_to(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Shrink a (3, H, W) uint8 image so its long side is at most `max_side` (antialiased); never enlarges."""
    if not max_side or max(image.shape[-2:]) <= max_side:
        return image
    height, width = image.shape[-2:]
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def to_unit_float(image: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """(3, H, W) uint8 -> (1, 3, H, W) float32 in [0, 1] on `device`."""
    return image.to(device=device, dtype=torch.float32).div_(255.0)[None]


def from_unit_float(image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] -> (3, H, W) uint8 on the CPU."""
    return image[0].detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: scale to 8 bits by the format's range instead of clipping
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values * (255.0 if values.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels are composited over white rather than keeping arbitrary hidden colours
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
