"""fastkd's own FFCV decoder: each sample's view box (``decode.view_boxes``) cut while decoding.

FFCV's ``RandomResizedCropRGBImageDecoder`` draws its crops from numba's generator, which cannot be
replayed; this decoder takes the boxes fastkd computed from (seed, epoch, index, stored size), once per
batch (a short object-mode call from the compiled code), and per sample, in FFCV's compiled parallel
loop: libjpeg-turbo's lossless crop (``tjTransform``) to the box widened to whole 16-pixel MCUs, a
decode of only that window at the DCT scale 1/s of ``decode.dct_scale``, then OpenCV's area resize
(FFCV's ``resize_crop``) of the box, rounded to whole scaled pixels, to ``res x res``. With ``--views-per-image``
K > 1 the K views of a photo (consecutive rows) share one such decode: of the window covering their K boxes, at the
smallest of their DCT scales; each view is then resized from it. A sample that does not decode is reported after
its batch (``failed``) and the backend names it.
"""
from __future__ import annotations

import warnings

import numpy as np

MCU = 16  # the largest JPEG MCU side (4:2:0): every crop origin on this grid is valid for tjTransform


def window(boxes: np.ndarray, sizes: np.ndarray, out: int, raw: bool = False, views_per_image: int = 1) -> np.ndarray:
    """int64 (n, 12) per ``decode.view_boxes`` row: MCU-aligned window (x, y, w, h) in stored pixels, DCT
    scale s, the box in the window's scaled pixels as (row0, row1, col0, col1), each at least one pixel,
    the flip flag, the row of the window's first view (which decodes it) and its number of views.
    ``views_per_image`` K > 1: rows come in whole photos of K views (``decode.view_boxes``), and the K views of a
    photo share one window, covering all their boxes, at the smallest of their DCT scales (one decode, K cuts).
    ``raw`` (pixels stored uncompressed): the window is the whole image at scale 1."""
    from .decode import dct_scale

    x0, y0, bw, bh, flip = boxes.T
    wid, hgt = sizes[:, 0], sizes[:, 1]
    n, k = len(boxes), max(1, int(views_per_image))
    lead = np.arange(n) // k * k  # each photo's first row
    starts = np.arange(0, n, k)
    group = lambda reduce, v: reduce.reduceat(v, starts)[lead // k]  # noqa: E731  (over each photo's views)
    s = group(np.minimum, dct_scale(boxes, out)) if k > 1 else dct_scale(boxes, out)
    wx = np.floor(group(np.minimum, x0) / MCU) * MCU if k > 1 else np.floor(x0 / MCU) * MCU
    wy = np.floor(group(np.minimum, y0) / MCU) * MCU if k > 1 else np.floor(y0 / MCU) * MCU
    right, bottom = np.ceil(x0 + bw), np.ceil(y0 + bh)
    if k > 1:
        right, bottom = group(np.maximum, right), group(np.maximum, bottom)
    ww, wh = np.minimum(wid, right) - wx, np.minimum(hgt, bottom) - wy
    if raw:
        s, wx, wy, ww, wh = np.ones_like(s), 0 * wx, 0 * wy, wid, hgt
    dw, dh = np.ceil(ww / s), np.ceil(wh / s)
    r0 = np.clip(np.round((y0 - wy) / s), 0, dh - 1)
    c0 = np.clip(np.round((x0 - wx) / s), 0, dw - 1)
    r1 = np.clip(np.round((y0 + bh - wy) / s), r0 + 1, dh)
    c1 = np.clip(np.round((x0 + bw - wx) / s), c0 + 1, dw)
    count = np.minimum(k, n - lead)
    return np.stack([wx, wy, ww, wh, s, r0, r1, c0, c1, flip, lead, count], 1).astype(np.int64)


def view_decoder(boxes_of, failed):
    """An FFCV decoder (a ``ResizedCropRGBImageDecoder`` with its own code) for ``res x res`` views.
    ``boxes_of(batch_indices)`` -> int64 (n, 12) rows of :func:`window`; ``failed(batch_indices, status)``
    is called with libjpeg-turbo's status of every sample when one is not 0."""
    from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.compiler import Compiler
    from numba import objmode
    from numba.core.errors import NumbaWarning

    warnings.filterwarnings("ignore", message="Code running in object mode", category=NumbaWarning)

    class ViewDecoder(ResizedCropRGBImageDecoder):
        get_crop_generator = None  # the boxes come from boxes_of, not from a crop generator

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage = my_storage
                with objmode(win="int64[:, :]"):
                    win = boxes_of(batch_indices)
                status = np.zeros(len(batch_indices), dtype=np.int64)
                for k in my_range(len(batch_indices)):
                    if win[k, 10] != k:  # a later view of a photo: cut from the window its first view decodes
                        continue
                    field = metadata[batch_indices[k]]
                    data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    wx, wy, ww, wh, s = win[k, 0], win[k, 1], win[k, 2], win[k, 3], win[k, 4]
                    if field["mode"] == jpg:
                        crop = wx != 0 or wy != 0 or ww != width or wh != height
                        dw, dh = (ww + s - 1) // s, (wh + s - 1) // s
                        buf = temp_storage[k]
                        status[k] = imdecode_c(data, buf, height, width, wh, ww, wx, wy, 1, s, crop, False)
                        image = buf.reshape(-1)[: 3 * dh * dw].reshape(dh, dw, 3)
                    else:  # raw pixels: the window is the whole image (window(raw=True))
                        image = data.reshape(height, width, 3)
                    for j in range(k, k + win[k, 11]):
                        resize_crop_c(image, win[j, 5], win[j, 6], win[j, 7], win[j, 8], destination[j])
                        if win[j, 9]:
                            destination[j] = destination[j][:, ::-1].copy()
                if status.any():
                    with objmode():
                        failed(batch_indices, status)
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    return ViewDecoder
