"""Several views of one photo from one decode (``--views-per-image K``).

The K boxes of a photo are cut from a single decode: at the DCT scale that still serves all of them (the
smallest of their :func:`decode.dct_scale`), of the window covering all of them plus the resize filter's
support (the native window decoder; otherwise PIL decodes the whole image at that scale). Each view is then cut
as :func:`decode.cut_view` cuts one: a box on whole pixels at scale 1 by torch's uint8 antialiased resize of
exactly its pixels, any other by PIL's antialiased bilinear resize with the box. One box is
:func:`decode.cut_view` itself (so K = 1 is unchanged, bit for bit).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from fastkd.limits import too_many_pixels

from . import jpeg_window
from .decode import (DECODE_ERRORS, DecodeError, _on_whole_pixels, _open, _reason, _resize_crop, cut_view, dct_scale,
                     jpeg_size)


def cut_photo_views(data: bytes, views, out: int) -> np.ndarray:
    """uint8 (K, out, out, 3): ``views`` (K rows ``(x0, y0, w, h, flip)`` in stored pixels, ``decode.view_boxes``
    rows) of the stored image ``data``, decoded once."""
    views = np.asarray(views, dtype=np.float64).reshape(-1, 5)
    if len(views) == 1:
        return cut_view(data, views[0], out)[None]
    scale = int(dct_scale(views[:, :4], out).min())
    region = _native_window(data, views, scale, out)
    if region is None:
        region = _pil_whole(data, scale)
    pixels, ox, oy, k, sw, sh = region
    image = []  # the PIL image of the region, made once if some view needs PIL's resize
    return np.stack([_cut(pixels, image, ox, oy, k, sw, sh, v, out) for v in views])


def _native_window(data: bytes, views: np.ndarray, s: int, out: int):
    """``(pixels, x origin, y origin, scale, scaled width, scaled height)`` of the window decoded at scale ``1/s``
    that covers every box and its filter margin; None when the native decoder does not apply."""
    size = jpeg_size(data) if jpeg_window.AVAILABLE and jpeg_window.is_jpeg(data) else None
    if not size or min(size) <= 0:
        return None
    bomb = too_many_pixels(*size)
    if bomb:
        raise DecodeError(bomb)
    sw, sh = -(-size[0] // s), -(-size[1] // s)
    x0, y0, x1, y1 = views[:, 0] / s, views[:, 1] / s, (views[:, 0] + views[:, 2]) / s, (views[:, 1] + views[:, 3]) / s
    x1, y1 = np.minimum(x1, sw), np.minimum(y1, sh)
    whole = (s == 1) & np.array([_on_whole_pixels(v[:4], sw, sh) for v in views])
    # the antialiased filter reads up to (box side / out) pixels beyond a box it resizes: decode those too
    margin = np.where(whole, 0, np.ceil(np.maximum(x1 - x0, y1 - y0) / out) + 1)
    ix0, iy0 = max(0, int(np.min(np.floor(x0) - margin))), max(0, int(np.min(np.floor(y0) - margin)))
    ix1, iy1 = min(sw, int(np.max(np.ceil(x1) + margin))), min(sh, int(np.max(np.ceil(y1) + margin)))
    try:
        pixels, cx = jpeg_window.decode_window(data, s, ix0, iy0, ix1, iy1, sw)
    except jpeg_window.TooManyPixels as exc:
        raise DecodeError(str(exc)) from None
    except jpeg_window.WindowError:
        return None
    return pixels, cx, iy0, s, sw, sh


def _pil_whole(data: bytes, s: int):
    """The whole image decoded by PIL at DCT scale ``1/s`` where the format allows (JPEG), as
    :func:`_native_window`'s tuple."""
    try:
        with _open(data) as im:
            wid, hgt = im.size
            if s > 1:
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (wid // s, hgt // s))
            rw, rh = im.size
            pixels = np.array(im.convert("RGB"), dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None
    return pixels, 0, 0, int(round(wid / rw)), rw, rh


def _cut(pixels: np.ndarray, image: list, ox: int, oy: int, k: int, sw: int, sh: int, view, out: int) -> np.ndarray:
    """One view from a decoded region whose pixel (0, 0) is scaled pixel ``(ox, oy)`` at scale ``1/k`` of a
    ``sw x sh`` scaled image; ``image``: [] or [the region as a PIL image], filled on first need."""
    x0, y0, bw, bh = (float(v) for v in view[:4])
    flip = bool(view[4])
    if k == 1 and _on_whole_pixels((x0, y0, bw, bh), sw, sh):
        c, r = int(x0) - ox, int(y0) - oy
        return _resize_crop(pixels[r : r + int(bh), c : c + int(bw)], flip, out)
    fx0, fy0, fx1, fy1 = x0 / k, y0 / k, min((x0 + bw) / k, sw), min((y0 + bh) / k, sh)
    if not image:
        image.append(Image.fromarray(pixels))
    im = image[0].resize((out, out), Image.BILINEAR, box=(fx0 - ox, fy0 - oy, fx1 - ox, fy1 - oy))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im, dtype=np.uint8)

