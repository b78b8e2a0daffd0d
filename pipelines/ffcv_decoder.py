"""fastkd's own FFCV decoder: each sample's view box (``decode.view_boxes``) cut while decoding.

FFCV's ``RandomResizedCropRGBImageDecoder`` draws its crops from numba's generator, which cannot be
replayed; this decoder takes the boxes fastkd computed from (seed, epoch, index, stored size), once per
batch (a short object-mode call from the compiled code), and per sample, in FFCV's compiled parallel
loop: libjpeg-turbo's lossless crop (``tjTransform``) to the box widened to whole 16-pixel MCUs, a
decode of only that window at the DCT scale 1/s of ``decode.dct_scale``, then OpenCV's area resize
(FFCV's ``resize_crop``) of the box, rounded to whole scaled pixels, to ``res x res``. A sample that
does not decode is reported after its batch (``failed``) and the backend names it.
"""
from __future__ import annotations

import warnings

import numpy as np

MCU = 16  # the largest JPEG MCU side (4:2:0): every crop origin on this grid is valid for tjTransform


def window(boxes: np.ndarray, sizes: np.ndarray, out: int, raw: bool = False) -> np.ndarray:
    """int64 (n, 10) per ``decode.view_boxes`` row: MCU-aligned window (x, y, w, h) in stored pixels, DCT
    scale s, the box in the window's scaled pixels as (row0, row1, col0, col1), each at least one pixel,
    and the flip flag. ``raw`` (pixels stored uncompressed): the window is the whole image at scale 1."""
    from .decode import dct_scale

    x0, y0, bw, bh, flip = boxes.T
    wid, hgt = sizes[:, 0], sizes[:, 1]
    s = dct_scale(boxes, out)
    wx, wy = np.floor(x0 / MCU) * MCU, np.floor(y0 / MCU) * MCU
    ww, wh = np.minimum(wid, np.ceil(x0 + bw)) - wx, np.minimum(hgt, np.ceil(y0 + bh)) - wy
    if raw:
        s, wx, wy, ww, wh = np.ones_like(s), 0 * wx, 0 * wy, wid, hgt
    dw, dh = np.ceil(ww / s), np.ceil(wh / s)
    r0 = np.clip(np.round((y0 - wy) / s), 0, dh - 1)
    c0 = np.clip(np.round((x0 - wx) / s), 0, dw - 1)
    r1 = np.clip(np.round((y0 + bh - wy) / s), r0 + 1, dh)
    c1 = np.clip(np.round((x0 + bw - wx) / s), c0 + 1, dw)
    return np.stack([wx, wy, ww, wh, s, r0, r1, c0, c1, flip], 1).astype(np.int64)


def view_decoder(boxes_of, failed):
    """An FFCV decoder (a ``ResizedCropRGBImageDecoder`` with its own code) for ``res x res`` views.
    ``boxes_of(batch_indices)`` -> int64 (n, 10) rows of :func:`window`; ``failed(batch_indices, status)``
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
                    field = metadata[batch_indices[k]]
                    data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    wx, wy, ww, wh, s, r0, r1, c0, c1, flip = win[k]
                    if field["mode"] == jpg:
                        crop = wx != 0 or wy != 0 or ww != width or wh != height
                        dw, dh = (ww + s - 1) // s, (wh + s - 1) // s
                        buf = temp_storage[k]
                        status[k] = imdecode_c(data, buf, height, width, wh, ww, wx, wy, 1, s, crop, False)
                        image = buf.reshape(-1)[: 3 * dh * dw].reshape(dh, dw, 3)
                    else:  # raw pixels: the window is the whole image (window(raw=True))
                        image = data.reshape(height, width, 3)
                    resize_crop_c(image, r0, r1, c0, c1, destination[k])
                    if flip:
                        destination[k] = destination[k][:, ::-1].copy()
                if status.any():
                    with objmode():
                        failed(batch_indices, status)
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    return ViewDecoder
