"""Decoding only the window of a JPEG a view needs (``roijpeg.c``, libjpeg-turbo through ctypes).

:func:`decode_window` decodes, at DCT scale 1/s, the rows of the window and the iMCU columns that cover it:
rows above it are entropy-decoded only (no IDCT, no colour conversion), rows below it are never read, and
columns outside it skip the IDCT. ``setup.py`` builds the library (``fastkd.pipelines._roijpeg``) from the
system's libjpeg-turbo; where it could not be built, :data:`AVAILABLE` is False and ``decode.cut_view``
decodes whole (DCT-scaled) images with PIL instead.
"""
from __future__ import annotations

import ctypes
import importlib.util
from typing import Optional, Tuple

import numpy as np

from fastkd.limits import ENV, max_image_pixels

MSG_BYTES = 256  # >= libjpeg's JMSG_LENGTH_MAX
VERSION = 2  # roijpeg.c's fk_roijpeg_version(): the interface this module calls


def _load() -> Optional[ctypes.CDLL]:
    try:
        spec = importlib.util.find_spec("fastkd.pipelines._roijpeg")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    try:
        version = lib.fk_roijpeg_version
    except AttributeError:  # built from an older roijpeg.c (other arguments): rebuild with pip install -e .
        return None
    version.restype = ctypes.c_int
    if version() != VERSION:
        return None
    sub = lib.fk_jpeg_subimage
    sub.restype = ctypes.c_long
    sub.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                    ctypes.c_void_p, ctypes.c_ulong] + [ctypes.POINTER(ctypes.c_int)] * 4 + [ctypes.c_ulonglong]
    fn = lib.fk_jpeg_decode_window
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_int),
                   ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_int, ctypes.c_ulonglong]
    return lib


_LIB = _load()
AVAILABLE = _LIB is not None


class WindowError(Exception):
    """The window could not be decoded this way (an error, a warning on corrupt data, an unsupported colour
    space such as CMYK): the caller decodes the image another way."""


class TooManyPixels(WindowError):
    """The JPEG declares more pixels than :func:`fastkd.limits.max_image_pixels` (a decompression bomb):
    refused before anything was allocated; the caller must not decode it another way either."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _bytes(data) -> np.ndarray:
    """``data`` (bytes or a uint8 array) as a uint8 array, without a copy."""
    return data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)


def subimage(data, x0: int, y0: int, x1: int, y1: int) -> Optional[Tuple[np.ndarray, int, int, int, int]]:
    """``(jpeg, x, y, width, height)``: a JPEG (uint8 array) of only the restart segments of ``data`` that cover
    stored pixels ``[x0, x1) x [y0, y1)`` plus one MCU around them, cut without decoding (``fk_jpeg_subimage``),
    and its place in the image; inside the window its pixels are the whole image's. None when ``data`` has
    no restart interval that divides its MCU rows (or is progressive), or declares more pixels than
    ``fastkd.limits`` allows (the whole decode refuses it): decode it whole-image-wise instead."""
    src = _bytes(data)
    out = np.empty(len(src) + 16, dtype=np.uint8)
    ox, oy, ow, oh = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    n = _LIB.fk_jpeg_subimage(src.ctypes.data, len(src), x0, y0, x1, y1, out.ctypes.data, len(out),
                              ctypes.byref(ox), ctypes.byref(oy), ctypes.byref(ow), ctypes.byref(oh),
                              max_image_pixels())
    if n <= 0:
        return None
    return out[:n], ox.value, oy.value, ow.value, oh.value


def decode_window(data, scale: int, x0: int, y0: int, x1: int, y1: int, scaled_width: int
                  ) -> Tuple[np.ndarray, int]:
    """uint8 (y1 - y0, w, 3) RGB rows ``[y0, y1)`` of ``data`` decoded at scale ``1/scale`` (1, 2, 4, 8), holding
    columns ``[x, x + w)`` with ``x <= x0`` and ``x + w >= x1`` (iMCU-aligned); returns it and ``x``.
    ``data``: the JPEG's bytes (or a uint8 array); ``scaled_width``: ceil(stored width / scale), which bounds
    the buffer.

    A JPEG with restart markers is first cut to the segments around the window (:func:`subimage`), so that
    nothing else is decoded, not even entropy-decoded; then, as for any JPEG, only the window's rows and
    iMCU columns go through the IDCT."""
    sub = subimage(data, x0 * scale, y0 * scale, x1 * scale, y1 * scale)
    if sub is None:
        return _decode(data, scale, x0, y0, x1, y1, scaled_width)
    part, ox, oy, ow, _ = sub  # ox, oy: whole MCUs, so whole pixels at every scale
    sx, oy = ox // scale, oy // scale
    pixels, cx = _decode(part, scale, x0 - sx, y0 - oy, x1 - sx, y1 - oy, -(-ow // scale),
                         inner_left=ox > 0, inner_right=-(-(ox + ow) // scale) < scaled_width)
    return pixels, cx + sx


def _decode(data, scale: int, x0: int, y0: int, x1: int, y1: int, scaled_width: int,
            inner_left: bool = False, inner_right: bool = False) -> Tuple[np.ndarray, int]:
    """:func:`decode_window` of a JPEG, whole or a :func:`subimage` (``inner_left``/``inner_right``: its edge
    is inside the whole image, so its edge column is not the whole decode's either).

    libjpeg-turbo's cropped decode replicates the chroma at the crop's edge columns where the whole decode
    upsamples from the neighbour beyond it ("fancy" upsampling), so one more column is decoded on each side
    and those edge columns are dropped: every pixel returned is the whole decode's."""
    left, right = x0 > 0, x1 < scaled_width
    x0, x1 = x0 - left, x1 + right
    if (y1 - y0) * scaled_width > max_image_pixels():  # the buffer alone would be a bomb's
        raise TooManyPixels(f"a window of {scaled_width}x{y1 - y0} pixels, over the limit of {max_image_pixels()}; "
                            f"{ENV} raises the limit")
    cap = (y1 - y0) * scaled_width * 3
    out = np.empty(cap, dtype=np.uint8)
    cx, cw = ctypes.c_int(), ctypes.c_int()
    msg = ctypes.create_string_buffer(MSG_BYTES)
    src = _bytes(data)
    rc = _LIB.fk_jpeg_decode_window(src.ctypes.data, len(src), scale, x0, y0, x1, y1, out.ctypes.data, cap,
                                    ctypes.byref(cx), ctypes.byref(cw), msg, MSG_BYTES, max_image_pixels())
    if rc == -4:
        raise TooManyPixels(f"{msg.value.decode('utf-8', 'replace')}; {ENV} raises the limit")
    if rc != 0:
        raise WindowError(msg.value.decode("utf-8", "replace") or f"libjpeg failed ({rc})")
    pixels = out[: (y1 - y0) * cw.value * 3].reshape(y1 - y0, cw.value, 3)
    first = int(cx.value > 0 or inner_left)  # an edge column inside the image: inexact
    last = cw.value - int(cx.value + cw.value < scaled_width or inner_right)
    return pixels[:, first:last], cx.value + first
