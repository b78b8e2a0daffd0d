"""The JPEG window decoder (pipelines/roijpeg.c): it is built, it decodes exactly the pixels a whole decode
gives inside the window (at every DCT scale, baseline and progressive, colour and grey), views cut through it
equal views cut from whole images, and what it cannot decode (damaged data, CMYK) goes to PIL, which decodes
it or names the damage."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastkd.bench.photos import photo
from fastkd.pipelines import decode, jpeg_window
from fastkd.pipelines.view_policy import ViewPolicy
from layout_tools import encode_jpeg


def _jpeg(width: int, height: int, seed: int = 0, mode: str = "RGB", **save) -> bytes:
    return encode_jpeg(photo(np.random.default_rng(seed), height, width), 90, mode, **save)


def _whole(data: bytes, scale: int) -> np.ndarray:
    """PIL's decode of the whole image at DCT scale 1/scale (its own libjpeg-turbo)."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if scale > 1:
            im.draft(im.mode, (w // scale, h // scale))
        assert round(w / im.size[0]) == scale
        return np.asarray(im.convert("RGB")).astype(int)


def test_window_decoder_is_built():
    assert jpeg_window.AVAILABLE, ("fastkd.pipelines._roijpeg was not built: install libjpeg-turbo's headers "
                                   "(Debian: libjpeg62-turbo-dev) and run scripts/setup.sh again")


@pytest.mark.parametrize("restarts", [None, "blocks", "rows"])
@pytest.mark.parametrize("kind", ["420", "progressive", "grey", "444", "422"])
def test_window_holds_the_whole_decodes_pixels(kind, restarts):
    """Bit for bit: libjpeg-turbo's accurate integer IDCT and upsampling are exact in every SIMD build, and the
    window decoder drops the crop's edge columns, where a cropped decode upsamples chroma differently. With
    restart markers (every 3 MCUs, or every MCU row) the window is first cut out of the stored bytes: the
    sub-JPEG's artificial edges lie a whole MCU outside the window."""
    save = {"progressive": {"progressive": True}, "444": {"subsampling": 0}, "422": {"subsampling": 1}}.get(kind, {})
    save.update({None: {}, "blocks": {"restart_marker_blocks": 3}, "rows": {"restart_marker_rows": 1}}[restarts])
    data = _jpeg(333, 251, seed=3, mode="L" if kind == "grey" else "RGB", **save)  # sides not multiples of 16
    assert decode.jpeg_size(data) == (333, 251)
    sub = jpeg_window.subimage(data, 100, 80, 140, 120)
    assert (sub is not None) == (restarts is not None and kind != "progressive")  # 21 or 42 MCUs a row: 3 divides
    if sub is not None:  # the window's MCUs and one around them, widened to whole restart intervals
        part, ox, oy, ow, oh = sub
        assert len(part) < len(data) / (4 if restarts == "blocks" else 2) and ox <= 100 - 8 and oy <= 80 - 8 and ox + ow >= 148 and oy + oh >= 128
    rng = np.random.default_rng(0)
    for scale in (1, 2, 4, 8):
        whole = _whole(data, scale)
        sh, sw = whole.shape[:2]
        corners = [(0, 0, sw, sh), (sw - 5, sh - 3, sw, sh), (1, sh // 2, 9, sh // 2 + 1)]
        for _ in range(12):
            x0, y0 = int(rng.integers(0, sw - 1)), int(rng.integers(0, sh - 1))
            corners.append((x0, y0, int(rng.integers(x0 + 1, sw + 1)), int(rng.integers(y0 + 1, sh + 1))))
        for x0, y0, x1, y1 in corners:
            pixels, cx = jpeg_window.decode_window(data, scale, x0, y0, x1, y1, sw)
            assert pixels.shape[0] == y1 - y0 and cx <= x0 and cx + pixels.shape[1] >= x1, (scale, x0, y0, x1, y1)
            np.testing.assert_array_equal(pixels, whole[y0:y1, cx : cx + pixels.shape[1]],
                                          err_msg=f"{kind} 1/{scale} window {(x0, y0, x1, y1)}")


def test_the_converters_jpegs_carry_restart_intervals_that_divide_their_mcu_rows():
    from fastkd.converters.images import encode_jpeg, restart_interval

    assert [restart_interval(w) for w in (640, 500, 333, 368, 16, 100)] == [4, 4, 3, 23, 1, 7]
    for w, h in [(640, 480), (333, 251), (368, 200), (100, 90)]:
        data = encode_jpeg(photo(np.random.default_rng(w), h, w), 90)
        at = data.index(b"\xff\xdd")  # DRI: the interval in MCUs
        assert int.from_bytes(data[at + 4 : at + 6], "big") == restart_interval(w)
        whole = _whole(data, 1)
        for x0, y0, x1, y1 in [(w // 3, h // 4, w // 2, h // 2), (0, 0, 17, 9), (w - 20, h - 20, w, h)]:
            assert jpeg_window.subimage(data, x0, y0, x1, y1) is not None
            pixels, cx = jpeg_window.decode_window(data, 1, x0, y0, x1, y1, w)
            np.testing.assert_array_equal(pixels, whole[y0:y1, cx : cx + pixels.shape[1]])


def test_views_cut_through_the_window_equal_views_cut_from_whole_images(monkeypatch):
    datas = [_jpeg(w, h, seed=i) for i, (w, h) in enumerate([(640, 360), (480, 480), (360, 540), (500, 375)] * 3)]
    sizes = np.array([decode.jpeg_size(d) for d in datas], dtype=np.float64)
    for res in (224, 112, 96):
        view = ViewPolicy.for_resolution(res, True).sample(7, 2, np.arange(len(datas)), sizes)
        boxes = np.concatenate([view["box"], view["flip"][:, None]], 1)
        scales = set(decode.dct_scale(boxes, res).tolist())
        window = [decode.cut_view(d, b, res) for d, b in zip(datas, boxes)]
        monkeypatch.setattr(jpeg_window, "AVAILABLE", False)
        whole = [decode.cut_view(d, b, res) for d, b in zip(datas, boxes)]
        monkeypatch.setattr(jpeg_window, "AVAILABLE", True)
        for a, b in zip(window, whole):
            diff = np.abs(a.astype(int) - b.astype(int))
            # the same pixels resized from box offsets relative to the window: float rounding of the filter
            # weights moves a few pixels by one level (measured: max 1, mean <= 0.22)
            assert a.shape == (res, res, 3) and diff.max() <= 2 and diff.mean() < 0.3, (res, diff.max(), diff.mean())
        if res == 96:
            assert scales > {1}  # some views were decoded at a reduced DCT scale


def test_damaged_data_goes_to_pil_which_names_it():
    data = _jpeg(320, 240, seed=1)
    cut = data[: len(data) // 2]  # the second half of the rows is missing
    with pytest.raises(jpeg_window.WindowError):  # libjpeg's "premature end" warning: not served
        jpeg_window.decode_window(cut, 1, 0, 200, 320, 240, 320)
    with pytest.raises(decode.DecodeError, match="truncated"):
        decode.cut_view(cut, (0, 200, 320, 40, 0), 32)
    with pytest.raises(decode.DecodeError):
        decode.cut_view(b"\xff\xd8\xff" + b"\x00" * 200, (0, 0, 10, 10, 0), 8)


def test_cmyk_goes_to_pil():
    rgb = photo(np.random.default_rng(2), 120, 160)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    with pytest.raises(jpeg_window.WindowError):  # libjpeg converts no CMYK to RGB
        jpeg_window.decode_window(data, 1, 0, 0, 160, 120, 160)
    view = decode.cut_view(data, (0, 0, 160, 120, 0), 64)
    assert view.shape == (64, 64, 3)
    ref = np.asarray(Image.fromarray(rgb).resize((64, 64), Image.BILINEAR)).astype(int)
    assert np.abs(view.astype(int) - ref).mean() < 6  # not inverted (an inverted CMYK would be ~100 off)
