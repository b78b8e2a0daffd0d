"""A fingerprint of each view a teacher output was computed on: stored beside every cached row and compared
on every read, so a cached output is never served for other pixels (``store.TeacherCache``)."""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

from fastkd.hashing import mix64

FP_WORDS = 2  # int64 words of a view fingerprint
_FP_WEIGHTS: Dict[tuple, torch.Tensor] = {}


def view_fingerprint(images: torch.Tensor) -> torch.Tensor:
    """int64 (N, 2) on ``images``' device: a fingerprint of each float32 (N, C, H, W) view, exactly as the
    teacher sees it (normalised and augmented). Each word is an integer weighted sum of the pixels' float32
    bit patterns (as int32) with fixed pseudo-random 13-bit weights per (c, y, x): exact (no overflow) up to
    2**19 values a view (3 x 418 x 418), beyond that modulo 2**64, which is still order-independent, so it
    depends on the pixels alone, not on the batch, its size or the memory format (identical in a 256-view
    ``cache build`` batch and a training batch). Any change of one value changes both words."""
    x = images.detach()
    if x.dtype != torch.float32:
        x = x.float()
    shape, dev = tuple(x.shape[1:]), x.device
    w = _FP_WEIGHTS.get((shape, str(dev)))
    if w is None:
        pos = np.arange(FP_WORDS * math.prod(shape), dtype=np.uint64)
        weights = (mix64(pos + np.uint64(0x5EED)) >> np.uint64(51)) | np.uint64(1)  # odd, < 2**13
        w = torch.from_numpy(weights.astype(np.int64)).view(FP_WORDS, *shape).to(dev)
        _FP_WEIGHTS[(shape, str(dev))] = w
    bits = x.view(torch.int32).long()
    return torch.stack([(bits * w[k]).sum((1, 2, 3)) for k in range(FP_WORDS)], 1)
