"""Cutting view boxes from decoded images on the training device (memory backend, torch backend on a GPU), and
the uint8 resize that every CPU path cuts whole-pixel views with (:func:`resize_hwc`).

:func:`cut_views`, per sample: the whole pixels around the box, as float, then ``torchvision.ops.roi_align`` with
``aligned=True`` and adaptive sampling (each output pixel averages ceil(box / out)^2 bilinear samples:
an area filter when shrinking, bilinear when enlarging) to ``out x out``; the exact fractional box is
kept. The loop is per sample because the images differ in size; its cost is a few small kernels each.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def resize_hwc(crop: torch.Tensor, out: int, flip: bool = False) -> torch.Tensor:
    """uint8 (out, out, 3): uint8 (h, w, 3) ``crop`` resized by torch's uint8 antialiased bilinear (the kernel
    torchvision's tensor ``RandomResizedCrop`` uses; vectorised, 3-5x faster than PIL's, within one grey level
    of it), mirrored if ``flip``. Channels-last in and out: no transposing copy."""
    import torch.nn.functional as F

    x = crop.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    view = F.interpolate(x, (out, out), mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
    return view.flip(1) if flip else view


def cut_views(images: Sequence[torch.Tensor], boxes: np.ndarray, out: int) -> torch.Tensor:
    """uint8 (B, out, out, 3): box ``boxes[k, :4]`` = (x0, y0, w, h) in the pixels of uint8 (3, H, W)
    ``images[k]``, mirrored where ``boxes[k, 4]`` (``decode.view_boxes`` rows) is set."""
    from torchvision.ops import roi_align

    dev = images[0].device if len(images) else torch.device("cpu")
    res = torch.empty((len(images), 3, out, out), dtype=torch.float32, device=dev)
    for k, image in enumerate(images):
        h, w = image.shape[1:]
        x0, y0, bw, bh = (float(v) for v in boxes[k, :4])
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(w, int(np.ceil(x0 + bw))), min(h, int(np.ceil(y0 + bh)))
        window = image[None, :, r0:r1, c0:c1].float()
        roi = torch.tensor([[0.0, x0 - c0, y0 - r0, x0 - c0 + bw, y0 - r0 + bh]], dtype=torch.float32, device=dev)
        res[k] = roi_align(window, roi, (out, out), 1.0, -1, aligned=True)[0]
    if boxes.shape[1] > 4 and boxes[:, 4].any():
        flip = torch.from_numpy(boxes[:, 4] > 0).to(dev)
        res[flip] = res[flip].flip(3)
    return res.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
