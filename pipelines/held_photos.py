"""The memory backend's photo store: a split decoded once, whole; views cut every epoch.

For mid-sized photo sets (Cars, Dogs, Flowers, Aircraft) trained with RandomResizedCrop: every image is
decoded once into one flat uint8 buffer on the device, packed without padding: at its stored size when
the whole split fits the memory limit (a view is then cut from exactly the pixels the torch backend
decodes, its box on whole pixels), else with the aspect kept and the shorter side at most the policy's
``base``, the side torchvision's evaluation resizes to (``decode.capped_image``). A batch of views is
then each box scaled to its held image's pixels and cut on the device (``resize.cut_views``; on a
CPU :func:`resize_views`, with the box edges on whole held pixels): the same boxes the other backends cut.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .backend import worker_batches

DECODE_CHUNK = 64


class _Whole(torch.utils.data.Dataset):
    def __init__(self, reader, short: Optional[int]):
        self.reader, self.short = reader, short

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        from .decode import DecodeError, capped_image, decode_whole

        try:
            data = self.reader.payload(i)
            return (decode_whole(data) if self.short is None else capped_image(data, self.short)), None
        except DecodeError as exc:
            return None, str(exc)


def held_shapes(table, short: Optional[int]) -> np.ndarray:
    """int64 (n, 2) ``(height, width)`` of each image as held: shorter side capped at ``short`` (None: as stored)."""
    w, h = table["width"].astype(np.float64), table["height"].astype(np.float64)
    k = np.minimum(1.0, (np.inf if short is None else short) / np.minimum(w, h))
    return np.stack([np.where(k < 1, np.maximum(1, np.round(h * k)), h),
                     np.where(k < 1, np.maximum(1, np.round(w * k)), w)], 1).astype(np.int64)


class HeldPhotos:
    """``flat``: uint8 buffer of every image (H, W, 3) back to back on ``device``; ``shapes``/``offsets`` per image.
    ``short``: the cap on the shorter side, None to hold every image at its stored size."""

    def __init__(self, reader, short: Optional[int], device: torch.device):
        self.reader, self.short, self.device = reader, short, device
        self.shapes = held_shapes(reader.table, short)
        sizes = self.shapes.prod(1) * 3
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.nbytes = int(self.offsets[-1])
        self.stored = np.stack([reader.table["width"], reader.table["height"]], 1).astype(np.float64)

    def decode(self, workers: int, fail) -> None:
        """Fills the buffer (``workers`` processes); ``fail(i, reason)`` -> the exception to raise."""
        self.flat = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        loader = torch.utils.data.DataLoader(_Whole(self.reader, self.short), batch_size=DECODE_CHUNK,
                                             num_workers=workers, collate_fn=list,
                                             generator=torch.Generator())  # no draw from the global RNG
        i = 0
        for chunk in worker_batches(loader):  # in order
            for image, error in chunk:
                if error is not None:
                    raise fail(i, error)
                assert image.shape[:2] == tuple(self.shapes[i]), (i, image.shape, self.shapes[i])
                image = np.require(image, requirements="W")  # PIL's arrays are read-only: torch would warn
                self.flat[self.offsets[i] : self.offsets[i + 1]].copy_(torch.from_numpy(image).reshape(-1))
                i += 1

    def views(self, idx: np.ndarray, boxes: np.ndarray, out: int) -> torch.Tensor:
        """uint8 (B, out, out, 3): view ``boxes[k]`` (``decode.view_boxes`` row, stored pixels) of image ``idx[k]``."""
        idx = np.asarray(idx, dtype=np.int64)
        scale = self.shapes[idx][:, ::-1] / self.stored[idx]  # held / stored, (x, y)
        held = boxes * np.concatenate([scale, scale, np.ones((len(idx), 1))], 1)
        images = [self.flat[self.offsets[i] : self.offsets[i + 1]].view(*self.shapes[i], 3) for i in idx]
        if self.device.type == "cpu":
            return resize_views(images, held, out)
        from .resize import cut_views

        return cut_views([im.permute(2, 0, 1) for im in images], held, out)


def resize_views(images, boxes: np.ndarray, out: int) -> torch.Tensor:
    """uint8 (B, out, out, 3) on the CPU: box ``boxes[k, :4]`` of uint8 (H, W, 3) ``images[k]``, its edges
    rounded to whole held pixels (a shift under half a held pixel), resized by torch's uint8 antialiased
    bilinear (torchvision's tensor ``RandomResizedCrop``: vectorised, 5-10x faster than ``cut_views``'
    float ``roi_align`` per sample), mirrored where ``boxes[k, 4]`` is set."""
    from .resize import resize_hwc

    res = torch.empty((len(images), out, out, 3), dtype=torch.uint8)
    edges = np.round(np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:4]], 1)).astype(np.int64)
    flips = boxes[:, 4] > 0 if boxes.shape[1] > 4 else np.zeros(len(images), dtype=bool)
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        c0, r0 = min(max(0, edges[k, 0]), w - 1), min(max(0, edges[k, 1]), h - 1)
        c1, r1 = max(c0 + 1, min(w, edges[k, 2])), max(r0 + 1, min(h, edges[k, 3]))
        res[k] = resize_hwc(image[r0:r1, c0:c1], out, bool(flips[k]))
    return res
