"""Decoding downloaded images robustly: greyscale, CMYK, palette, 16-bit, PNG saved as JPEG, corrupt files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastkd.converters.images import CorruptImageError, load_rgb_file
from fastkd.errors import UserError


def _rgb_pattern() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=2).astype(np.uint8)


def test_greyscale_decodes_to_rgb(tmp_path):
    grey = _rgb_pattern()[:, :, 0]
    path = tmp_path / "g.png"
    Image.fromarray(grey, "L").save(path)
    rgb = load_rgb_file(str(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, axis=2))


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    rgb = _rgb_pattern()
    path = tmp_path / "c.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = load_rgb_file(str(path))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 3  # not inverted (an inverted CMYK would be ~127 off)


def test_png_disguised_as_jpeg(tmp_path):
    rgba = np.concatenate([_rgb_pattern(), np.full((48, 64, 1), 255, np.uint8)], axis=2)
    path = tmp_path / "photo.JPEG"
    Image.fromarray(rgba, "RGBA").save(path, format="PNG")
    assert path.read_bytes()[:4] == b"\x89PNG"
    out = load_rgb_file(str(path))
    np.testing.assert_array_equal(out, _rgb_pattern())  # lossless: decoded by content, not extension


def test_palette_image_decodes_to_rgb(tmp_path):
    path = tmp_path / "p.gif"
    Image.fromarray(_rgb_pattern()).convert("P").save(path)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(load_rgb_file(str(path)), expected)


def test_16bit_greyscale_is_scaled(tmp_path):
    grey16 = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    path = tmp_path / "g16.png"
    Image.fromarray(grey16).save(path)
    out = load_rgb_file(str(path))
    assert np.abs(out[:, :, 0].astype(int) - grey16 / 257.0).max() <= 1


@pytest.mark.parametrize("content", [b"", b"garbage bytes", "truncated"])
def test_corrupt_files_raise_corrupt_image_error(tmp_path, content):
    path = tmp_path / "bad.pgm"
    if content == "truncated":
        Image.fromarray(_rgb_pattern()[:, :, 0]).save(path)
        path.write_bytes(path.read_bytes()[:-500])
    else:
        path.write_bytes(content)
    with pytest.raises(CorruptImageError) as info:
        load_rgb_file(str(path))
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert isinstance(info.value, UserError)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing on disk"):
        load_rgb_file(str(tmp_path / "gone.jpg"))
