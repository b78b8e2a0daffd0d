"""Decoding stored images on the host: base squares (pad-and-crop) and views cut while decoding (RRC).

``cut_view`` decodes no more than the view needs: libjpeg-turbo's DCT scaling picks the smallest of 1/1,
1/2, 1/4, 1/8 scale that still gives the crop at least ``out`` pixels a side, and only the window of the
crop (plus the resize filter's support) is decoded (``jpeg_window.py``: in a JPEG with restart markers, as
``fastkd convert`` writes them, nothing but the window's segments is decoded at all; otherwise rows below it
are never read, rows above it only entropy-decoded); then the box is resized to ``out x out`` in one antialiased bilinear
pass: a box on whole pixels at scale 1 (most views at 224 px) is cropped and resized by torch's uint8 kernel
(torchvision's tensor ``RandomResizedCrop``; 3-5x faster than PIL's), a fractional DCT-scaled box by PIL's
resize with that box. Without the native window decoder (or for a JPEG it refuses, e.g. CMYK) PIL
decodes the whole image at that DCT scale (``draft``) instead, resized the same way. A box
``(x0, y0, w, h)`` is in stored pixels; at DCT scale 1/s it is ``(x0, y0, w, h) / s`` (libjpeg's
scaled pixel k covers stored pixels [k s, (k + 1) s)). Every backend cuts the same boxes; the tests hold
each to a float reference (full decode, crop, antialiased resize) within a few grey levels.

Decode failures name the sample: :func:`failure` turns them into a one-line ``UserError`` with the
shard file, split and index.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from typing import Optional

import numpy as np
from PIL import Image

from fastkd.errors import UserError
from fastkd.limits import too_many_pixels

from . import jpeg_window

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DecodeError(Exception):
    """A stored sample that does not decode; the backend names the sample (:func:`failure`)."""


def _open(data: bytes) -> Image.Image:
    """PIL's lazy open (only the header is read), refused when the header declares more pixels than
    ``fastkd.limits`` allows: nothing has been decoded or allocated yet."""
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None
    bomb = too_many_pixels(*im.size)
    if bomb:
        im.close()
        raise DecodeError(bomb)
    return im


def _reason(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__


def base_image(data: bytes, side: int) -> np.ndarray:
    """Decode, crop the centre square, resize to ``side`` (antialiased bilinear): pad-and-crop's base."""
    try:
        with _open(data) as im:
            im = im.convert("RGB")
            w, h = im.size
            m = min(w, h)
            left, top = (w - m) // 2, (h - m) // 2
            im = im.crop((left, top, left + m, top + m))
            if m != side:
                im = im.resize((side, side), Image.BILINEAR)  # antialiased when shrinking, like DALI's resize
            return np.asarray(im, dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None


def decode_whole(data: bytes) -> np.ndarray:
    """uint8 (H, W, 3): the whole image at its stored size (PIL; the pixels the window decoder returns)."""
    try:
        with _open(data) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None


def capped_image(data: bytes, short: int) -> np.ndarray:
    """The whole image, aspect kept, shrunk (never enlarged) so its shorter side is at most ``short``
    (DCT-scaled decode, then antialiased bilinear): what the memory backend holds for RRC views."""
    try:
        with _open(data) as im:
            wid, hgt = im.size
            m = min(wid, hgt)
            if m <= short:
                return np.array(im.convert("RGB"), dtype=np.uint8)
            size = (max(1, round(wid * short / m)), max(1, round(hgt * short / m)))
            box = (0, 0, wid, hgt)
            s = int(dct_scale((0, 0, m, m), short))
            if s > 1:
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (wid // s, hgt // s))
                box = (0, 0) + im.size
            return np.asarray(im.resize(size, Image.BILINEAR, box=box).convert("RGB"), dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None


def dct_scale(box, out: int) -> np.ndarray:
    """The largest s in (8, 4, 2, 1) with ``box / s`` still at least ``out`` pixels a side, for one box
    ``(x0, y0, w, h, ...)`` or an (n, 4+) array of them (int64, shape ``box.shape[:-1]``)."""
    side = np.minimum(np.asarray(box, dtype=np.float64)[..., 2], np.asarray(box, dtype=np.float64)[..., 3]) / out
    return np.select([side >= 8, side >= 4, side >= 2], [8, 4, 2], 1).astype(np.int64)


def jpeg_size(data: bytes) -> Optional[tuple]:
    """``(width, height)`` from a JPEG's frame header (SOFn marker), or None when there is none."""
    at, n = 2, len(data)
    while at + 9 < n and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = (data[at + 2] << 8) | data[at + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return (data[at + 7] << 8) | data[at + 8], (data[at + 5] << 8) | data[at + 6]
        at += 2 + length
    return None


def _cut_window(data: bytes, box, flip: bool, out: int) -> Optional[np.ndarray]:
    """:func:`cut_view` through the native window decoder; None when it does not apply (not a JPEG, no
    frame header, or the decoder refused: the caller decodes with PIL, which names a damaged image)."""
    size = jpeg_size(data) if jpeg_window.AVAILABLE and jpeg_window.is_jpeg(data) else None
    if not size or min(size) <= 0:
        return None
    bomb = too_many_pixels(*size)
    if bomb:  # PIL would refuse it too: say so now
        raise DecodeError(bomb)
    x0, y0, bw, bh = box
    s = int(dct_scale(box, out))
    sw, sh = -(-size[0] // s), -(-size[1] // s)  # libjpeg's scaled size: ceil(stored / s)
    if s == 1 and _on_whole_pixels(box, sw, sh):
        return _cut_whole_pixels(data, int(x0), int(y0), int(bw), int(bh), flip, out, sw)
    fx0, fy0, fx1, fy1 = x0 / s, y0 / s, min((x0 + bw) / s, sw), min((y0 + bh) / s, sh)
    # the antialiased filter reads up to (box side / out) pixels beyond the box: decode them too, so the
    # window gives the whole image's result
    m = math.ceil(max(fx1 - fx0, fy1 - fy0) / out) + 1
    ix0, iy0 = max(0, math.floor(fx0) - m), max(0, math.floor(fy0) - m)
    ix1, iy1 = min(sw, math.ceil(fx1) + m), min(sh, math.ceil(fy1) + m)
    try:
        pixels, cx = jpeg_window.decode_window(data, s, ix0, iy0, ix1, iy1, sw)
    except jpeg_window.TooManyPixels as exc:  # the header the decoder read is not the one jpeg_size found
        raise DecodeError(str(exc)) from None
    except jpeg_window.WindowError:
        return None
    im = Image.fromarray(pixels).resize((out, out), Image.BILINEAR, box=(fx0 - cx, fy0 - iy0, fx1 - cx, fy1 - iy0))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im, dtype=np.uint8)


def _on_whole_pixels(box, width: int, height: int) -> bool:
    """Box ``(x0, y0, w, h)`` lies on whole pixels inside a ``width x height`` image (cropped exactly, then
    resized by :func:`_resize_crop`)."""
    x0, y0, bw, bh = box
    return all(float(v).is_integer() for v in box) and x0 + bw <= width and y0 + bh <= height


def _cut_whole_pixels(data: bytes, x0: int, y0: int, bw: int, bh: int, flip: bool, out: int, width: int
                      ) -> Optional[np.ndarray]:
    """A box on whole stored pixels at DCT scale 1 (most views at 224 px): exactly its pixels are decoded,
    then torch's uint8 antialiased bilinear resize (the one torchvision's ``RandomResizedCrop`` uses on
    tensors, vectorised: 3-5x faster than PIL's; the two agree within one grey level) of the crop."""
    try:
        pixels, cx = jpeg_window.decode_window(data, 1, x0, y0, x0 + bw, y0 + bh, width)
    except jpeg_window.TooManyPixels as exc:
        raise DecodeError(str(exc)) from None
    except jpeg_window.WindowError:
        return None
    return _resize_crop(pixels[:, x0 - cx : x0 - cx + bw], flip, out)


def _resize_crop(crop: np.ndarray, flip: bool, out: int) -> np.ndarray:
    """uint8 (out, out, 3): uint8 (h, w, 3) ``crop`` through :func:`resize.resize_hwc`."""
    import torch

    from .resize import resize_hwc

    return np.ascontiguousarray(resize_hwc(torch.from_numpy(crop), out, flip).numpy())


def cut_view(data: bytes, view, out: int) -> np.ndarray:
    """uint8 (out, out, 3): stored image ``data`` cropped to ``view[:4]`` (x0, y0, w, h), resized to ``out``,
    mirrored when ``view[4]`` (a :func:`view_boxes` row) is set."""
    x0, y0, bw, bh = (float(v) for v in view[:4])
    flip = len(view) > 4 and bool(view[4])
    window = _cut_window(data, (x0, y0, bw, bh), flip, out)
    if window is not None:
        return window
    try:
        with _open(data) as im:
            wid, hgt = im.size
            s = int(dct_scale((x0, y0, bw, bh), out))
            if s > 1:  # libjpeg-turbo scaled decoding (PIL picks the largest s' with size // request >= s'); PNG: no-op
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (wid // s, hgt // s))
            rw, rh = im.size
            if (rw, rh) == (wid, hgt) and _on_whole_pixels((x0, y0, bw, bh), wid, hgt):
                pixels = np.array(im.crop((x0, y0, x0 + bw, y0 + bh)).convert("RGB"), dtype=np.uint8)
                return _resize_crop(pixels, flip, out)  # as the window decoder does
            k = float(round(wid / rw))  # the DCT scale actually applied: size = ceil(stored / k)
            crop = (x0 / k, y0 / k, min((x0 + bw) / k, rw), min((y0 + bh) / k, rh))
            im = im.resize((out, out), Image.BILINEAR, box=crop)  # antialiased: the filter widens when shrinking
            if flip:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None


def first_failure(reader, indices) -> Optional[tuple]:
    """``(index, reason)`` of the first of ``indices`` whose stored image PIL cannot decode, else None:
    names the culprit after a batched decoder (DALI, nvJPEG) failed without saying which sample."""
    for i in indices:
        try:
            with _open(reader.payload(int(i))) as im:
                im.load()
        except DECODE_ERRORS as exc:
            return int(i), _reason(exc)
        except DecodeError as exc:
            return int(i), str(exc)
    return None


def sample_name(reader, split: str, i: int) -> str:
    """``sample 12 of split 'train' (/data/cars/dali/train/shard-00000.tar at byte 5632)``."""
    row = reader.table[int(i)]
    shard = os.path.join(reader.folder, reader.shard_names[int(row["shard"])])
    return f"sample {int(i)} of split {split!r} ({shard} at byte {int(row['offset'])})"


def failure(reader, split: str, i: int, reason: str) -> UserError:
    return UserError(f"cannot decode {sample_name(reader, split, i)}: {reason}; the conversion is damaged: "
                     "convert the dataset again")


def stored_sizes(table, idx) -> np.ndarray:
    """(n, 2) stored ``(width, height)`` of samples ``idx`` from a split's sample table."""
    rows = table[np.asarray(idx, dtype=np.int64)]
    return np.stack([rows["width"], rows["height"]], 1).astype(np.float64)


def view_boxes(cfg, epoch: int, idx, table) -> Optional[np.ndarray]:
    """(n, 5) rows ``(x0, y0, w, h, flip)``: the RRC/centre views the Loader reports for ``idx``, which the
    backend cuts (flip included, so the training process does no per-pixel work but normalising);
    None for pad-and-crop (base images). ``idx``: one batch of the epoch order (with ``views_per_image`` K > 1
    each photo K times in a row, view ``k`` = position mod K)."""
    from .view_policy import view_keys, view_numbers

    policy = cfg.policy
    if policy is None or policy.kind != "rrc":
        return None
    keys = view_keys(idx, view_numbers(len(idx), cfg.views_per_image))
    view = policy.sample(cfg.seed, epoch, keys, stored_sizes(table, idx))
    return np.concatenate([view["box"], view["flip"][:, None]], 1)
