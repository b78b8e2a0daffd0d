"""The memory backend's photo store: a split decoded once, whole, at a capped side; views cut every epoch.

For mid-sized photo sets (Cars, Dogs, Flowers, Aircraft) trained with RandomResizedCrop: every image is
decoded once (``decode.capped_image``: aspect kept, shorter side at most the policy's ``base``, the
side torchvision's evaluation resizes to) into one flat uint8 buffer on the device, packed without
padding. A batch of views is then each box scaled to its held image's pixels and cut on the device
(``device_views.cut_views``) -- the same boxes the other backends cut, from fewer stored pixels.
"""
from __future__ import annotations

import numpy as np
import torch

from .backend import worker_batches

DECODE_CHUNK = 64


class _Whole(torch.utils.data.Dataset):
    def __init__(self, reader, short: int):
        self.reader, self.short = reader, short

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        from .decode import DecodeError, capped_image

        try:
            return capped_image(self.reader.payload(i), self.short), None
        except DecodeError as exc:
            return None, str(exc)


def held_shapes(table, short: int) -> np.ndarray:
    """int64 (n, 2) ``(height, width)`` of each image as held: shorter side capped at ``short``."""
    w, h = table["width"].astype(np.float64), table["height"].astype(np.float64)
    k = np.minimum(1.0, short / np.minimum(w, h))
    return np.stack([np.where(k < 1, np.maximum(1, np.round(h * k)), h),
                     np.where(k < 1, np.maximum(1, np.round(w * k)), w)], 1).astype(np.int64)


class HeldPhotos:
    """``flat``: uint8 buffer of every image (H, W, 3) back to back on ``device``; ``shapes``/``offsets`` per image."""

    def __init__(self, reader, short: int, device: torch.device):
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
                                             num_workers=workers, collate_fn=list)
        i = 0
        for chunk in worker_batches(loader):  # in order
            for image, error in chunk:
                if error is not None:
                    raise fail(i, error)
                assert image.shape[:2] == tuple(self.shapes[i]), (i, image.shape, self.shapes[i])
                self.flat[self.offsets[i] : self.offsets[i + 1]].copy_(torch.from_numpy(image).reshape(-1))
                i += 1

    def views(self, idx: np.ndarray, boxes: np.ndarray, out: int) -> torch.Tensor:
        """uint8 (B, out, out, 3): view ``boxes[k]`` (``decode.view_boxes`` row, stored pixels) of image ``idx[k]``."""
        from .device_views import cut_views

        idx = np.asarray(idx, dtype=np.int64)
        images = [self.flat[self.offsets[i] : self.offsets[i + 1]].view(*self.shapes[i], 3).permute(2, 0, 1) for i in idx]
        scale = self.shapes[idx][:, ::-1] / self.stored[idx]  # held / stored, (x, y)
        return cut_views(images, boxes * np.concatenate([scale, scale, np.ones((len(idx), 1))], 1), out)
