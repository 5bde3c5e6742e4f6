"""Input images: every format a user hands us decodes to RGB; every bad file fails with its name in the error."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.method.images import ImageError, downscale_to, read_image_file


def _save(path, array, mode=None, **kwargs):
    Image.fromarray(array, mode=mode).save(path, **kwargs)
    return str(path)


@pytest.fixture
def rgb_array():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix,options", [("png", {}), ("jpg", {"quality": 95}), ("webp", {"lossless": True})])
def test_rgb_formats_decode_to_rgb_tensor(tmp_path, rgb_array, suffix, options):
    path = _save(tmp_path / f"a.{suffix}", rgb_array, **options)
    image = read_image_file(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    if suffix != "jpg":  # lossless formats round-trip exactly
        assert torch.equal(image, torch.from_numpy(rgb_array).permute(2, 0, 1))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    image = read_image_file(_save(tmp_path / "g.png", gray, mode="L"))
    assert image.shape == (3, 10, 20)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.equal(image[0], torch.from_numpy(gray))


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent on the left half
    rgba[:, 4:, 3] = 255
    image = read_image_file(_save(tmp_path / "t.png", rgba, mode="RGBA"))
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert image[:, 0, 7].tolist() == [255, 0, 0]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # uint16 -> mode I;16
    image = read_image_file(str(path))
    assert image[0, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 tall as stored
    array[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)
    image = read_image_file(str(path))
    assert image.shape == (3, 40, 20)  # displayed upright: 20 wide, 40 tall
    assert image[:, :20].float().mean() > 200 and image[:, 20:].float().mean() < 50  # left half -> top half


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg.*empty"):
        read_image_file(str(path))


def test_truncated_jpeg_names_the_file(tmp_path, rgb_array):
    full = tmp_path / "full.jpg"
    _save(full, np.tile(rgb_array, (10, 10, 1)), quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.jpg.*not a readable image"):
        read_image_file(str(truncated))


def test_not_an_image_names_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG")
    with pytest.raises(ImageError, match="notes.png.*not a readable image"):
        read_image_file(str(path))


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ImageError, match="nowhere.png.*cannot be read"):
        read_image_file(str(tmp_path / "nowhere.png"))


def test_pixel_limit_refuses_before_decoding(tmp_path, rgb_array):
    path = _save(tmp_path / "big.png", rgb_array)  # 600 pixels
    with pytest.raises(ImageError, match="big.png.*above the limit.*--max-pixels"):
        read_image_file(path, max_pixels=599)
    assert read_image_file(path, max_pixels=600).shape == (3, 20, 30)


def test_downscale_caps_the_long_side_and_never_enlarges():
    image = torch.zeros(3, 100, 300, dtype=torch.uint8)
    assert downscale_to(image, 150).shape == (3, 50, 150)
    assert downscale_to(image, 1000) is image
