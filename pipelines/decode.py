"""Decoding stored images on the host: base squares (pad-and-crop) and views cut while decoding (RRC).

``cut_view`` decodes no more than the view needs: libjpeg-turbo's DCT scaling (PIL ``draft``) picks the
smallest of 1/1, 1/2, 1/4, 1/8 scale that still gives the crop at least ``out`` pixels a side, then PIL
crops the (fractional) box and resizes it to ``out x out`` in one antialiased bilinear pass. A box
``(x0, y0, w, h)`` is in stored pixels; at DCT scale 1/s it is ``(x0, y0, w, h) / s`` (libjpeg's
scaled pixel k covers stored pixels [k s, (k + 1) s)). Every backend cuts the same boxes; the tests hold
each to a float reference (full decode, crop, antialiased resize) within a few grey levels.

Decode failures name the sample: :func:`failure` turns them into a one-line ``UserError`` with the
shard file, split and index.
"""
from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np
from PIL import Image

from fastkd.errors import UserError

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DecodeError(Exception):
    """A stored sample that does not decode; the backend names the sample (:func:`failure`)."""


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except DECODE_ERRORS as exc:
        raise DecodeError(_reason(exc)) from None


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


def cut_view(data: bytes, view, out: int) -> np.ndarray:
    """uint8 (out, out, 3): stored image ``data`` cropped to ``view[:4]`` (x0, y0, w, h), resized to ``out``,
    mirrored when ``view[4]`` (a :func:`view_boxes` row) is set."""
    x0, y0, bw, bh = (float(v) for v in view[:4])
    flip = len(view) > 4 and bool(view[4])
    try:
        with _open(data) as im:
            wid, hgt = im.size
            s = int(dct_scale((x0, y0, bw, bh), out))
            if s > 1:  # libjpeg-turbo scaled decoding (PIL picks the largest s' with size // request >= s'); PNG: no-op
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (wid // s, hgt // s))
            rw, rh = im.size
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
    None for pad-and-crop (base images)."""
    policy = cfg.policy
    if policy is None or policy.kind != "rrc":
        return None
    view = policy.sample(cfg.seed, epoch, np.asarray(idx), stored_sizes(table, idx))
    return np.concatenate([view["box"], view["flip"][:, None]], 1)
