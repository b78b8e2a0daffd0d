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

MSG_BYTES = 256  # >= libjpeg's JMSG_LENGTH_MAX


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
    fn = lib.fk_jpeg_decode_window
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_int),
                   ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_int]
    return lib


_LIB = _load()
AVAILABLE = _LIB is not None


class WindowError(Exception):
    """The window could not be decoded this way (an error, a warning on corrupt data, an unsupported colour
    space such as CMYK): the caller decodes the image another way."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def decode_window(data: bytes, scale: int, x0: int, y0: int, x1: int, y1: int, scaled_width: int
                  ) -> Tuple[np.ndarray, int]:
    """uint8 (y1 - y0, w, 3) RGB rows ``[y0, y1)`` of ``data`` decoded at scale ``1/scale`` (1, 2, 4, 8), holding
    columns ``[x, x + w)`` with ``x <= x0`` and ``x + w >= x1`` (iMCU-aligned); returns it and ``x``.
    ``scaled_width``: ceil(stored width / scale), which bounds the buffer.

    libjpeg-turbo's cropped decode replicates the chroma at the crop's edge columns where the whole decode
    upsamples from the neighbour beyond it ("fancy" upsampling), so one more column is decoded on each side
    and those edge columns are dropped: every pixel returned is the whole decode's."""
    left, right = x0 > 0, x1 < scaled_width
    x0, x1 = x0 - left, x1 + right
    cap = (y1 - y0) * scaled_width * 3
    out = np.empty(cap, dtype=np.uint8)
    cx, cw = ctypes.c_int(), ctypes.c_int()
    msg = ctypes.create_string_buffer(MSG_BYTES)
    rc = _LIB.fk_jpeg_decode_window(data, len(data), scale, x0, y0, x1, y1, out.ctypes.data, cap, ctypes.byref(cx),
                                    ctypes.byref(cw), msg, MSG_BYTES)
    if rc != 0:
        raise WindowError(msg.value.decode("utf-8", "replace") or f"libjpeg failed ({rc})")
    pixels = out[: (y1 - y0) * cw.value * 3].reshape(y1 - y0, cw.value, 3)
    first = int(cx.value > 0)  # an edge column inside the image: inexact
    last = cw.value - int(cx.value + cw.value < scaled_width)
    return pixels[:, first:last], cx.value + first
