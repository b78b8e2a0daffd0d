"""Augmented views as pure functions of (seed, epoch, dataset index), applied to whole batches on the device.

Every backend delivers the same thing, a uint8 batch of ``S x S`` base images (shorter side resized to
``S``, centre square). The random choices of each sample's view are drawn from a counter-based hash
(splitmix64) of (seed, epoch, index), so they do not depend on batch composition, worker count or
backend, and a view can be replayed exactly later (teacher-output cache). Views are applied in one
vectorised ``grid_sample`` on the training device, then normalised.

Policies (chosen from the training resolution):
- ``pad_crop`` (res <= 64, the CIFAR recipe): pad by S/8 (4 px at 32) with zeros, random crop, flip.
- ``rrc`` (higher res, the ImageNet recipe): RandomResizedCrop, scale (0.08, 1), ratio (3/4, 4/3),
  10 tries then the centre crop (torchvision's rule), flip. Evaluation takes the centre ``res/S`` crop.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (array arithmetic wraps mod 2**64 without warnings)."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@functools.lru_cache(maxsize=64)
def _epoch_key(seed: int, epoch: int) -> np.ndarray:
    """The (seed, epoch) part of every stream's hash (a read-only uint64 array of one element)."""
    key = _mix(np.array([seed], dtype=np.uint64) * _GOLDEN + _mix(np.array([epoch], dtype=np.uint64) + _GOLDEN))
    key.flags.writeable = False
    return key


def uniforms(seed: int, epoch: int, index: np.ndarray, count: int, offset: int = 0) -> np.ndarray:
    """``(len(index), count)`` float64 uniforms in [0, 1), a pure function of (seed, epoch, index).

    Column ``j`` is stream ``offset + j`` of the sample; a stream's values depend on neither ``count`` nor
    ``offset``, so disjoint stream ranges are independent draws. The crop/flip view uses streams 0..40,
    ``augment.py`` streams 100 and above.
    """
    index = np.asarray(index, dtype=np.uint64).reshape(-1, 1)
    h = _mix(_epoch_key(seed, epoch) ^ _mix(index + _GOLDEN))
    streams = _mix(h + np.arange(offset + 1, offset + count + 1, dtype=np.uint64) * _GOLDEN)
    return (streams >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class ViewPolicy:
    base: int  # S: side of the square base image every backend delivers
    out: int  # side of the image the model sees
    kind: str  # "pad_crop" or "rrc"
    train: bool
    flip: bool = True
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)

    @property
    def padding(self) -> str:
        """grid_sample padding: zeros for pad-and-crop (torchvision's fill), border for RRC boxes."""
        return "zeros" if self.kind == "pad_crop" else "border"

    @property
    def pad(self) -> int:
        """Pad-and-crop's padding (S/8, at least 1 px; the crop offsets lie in [-pad, pad]); 0 for RRC."""
        return max(1, self.base // 8) if self.kind == "pad_crop" else 0

    @staticmethod
    def for_resolution(res: int, train: bool) -> "ViewPolicy":
        if res <= 64:
            return ViewPolicy(base=res, out=res, kind="pad_crop", train=train)
        return ViewPolicy(base=int(round(res / 0.875)), out=res, kind="rrc", train=train)

    def sample(self, seed: int, epoch: int, index: np.ndarray) -> Dict[str, np.ndarray]:
        """Crop box ``(x0, y0, w, h)`` in base pixels and a flip flag for each index."""
        n, s = len(index), float(self.base)
        if not self.train:
            side = s if self.kind == "pad_crop" else float(self.out)
            off = (s - side) / 2
            return {"box": np.tile([off, off, side, side], (n, 1)), "flip": np.zeros(n, dtype=bool)}
        # flip, then the pad offsets (streams 1, 2) or 10 RRC tries x (area, ratio, x, y) (streams 1..40)
        u = uniforms(seed, epoch, index, 3 if self.kind == "pad_crop" else 41)
        flip = (u[:, 0] < 0.5) if self.flip else np.zeros(n, dtype=bool)
        if self.kind == "pad_crop":
            pad = self.pad
            dx = np.floor(u[:, 1] * (2 * pad + 1)) - pad
            dy = np.floor(u[:, 2] * (2 * pad + 1)) - pad
            return {"box": np.stack([dx, dy, np.full(n, s), np.full(n, s)], 1), "flip": flip}
        return {"box": self._rrc_boxes(u[:, 1:], s), "flip": flip}

    def _rrc_boxes(self, u: np.ndarray, s: float) -> np.ndarray:
        area = s * s
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        boxes = np.tile([0.0, 0.0, s, s], (len(u), 1))  # fallback: the whole (square) base image
        done = np.zeros(len(u), dtype=bool)
        for t in range(10):
            ua, ur, ux, uy = u[:, 4 * t], u[:, 4 * t + 1], u[:, 4 * t + 2], u[:, 4 * t + 3]
            a = area * (self.scale[0] + ua * (self.scale[1] - self.scale[0]))
            r = np.exp(lo + ur * (hi - lo))
            w, h = np.round(np.sqrt(a * r)), np.round(np.sqrt(a / r))
            ok = ~done & (w <= s) & (h <= s) & (w > 0) & (h > 0)
            x0, y0 = np.floor(ux * (s - w + 1)), np.floor(uy * (s - h + 1))
            boxes[ok] = np.stack([x0, y0, w, h], 1)[ok]
            done |= ok
        return boxes


def apply_views(images: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, out: int,
                padding: str = "zeros") -> torch.Tensor:
    """Crop ``box`` (base pixels), resize to ``out``, flip.

    ``images``: float (N, C, S, S). One bilinear ``grid_sample`` for the whole batch. ``padding``:
    ``"zeros"`` for pad-and-crop (boxes reach past the border, zero fill as torchvision's padding);
    ``"border"`` for RandomResizedCrop, whose boxes lie inside the image, so an enlarged crop touching
    the border is not blended with black. Pixel-aligned crops reproduce the source pixels up to float
    rounding (exact at power-of-two sizes).
    """
    n, _, hgt, wid = images.shape
    box = box.to(images.device, images.dtype)
    sx, sy = box[:, 2] / wid, box[:, 3] / hgt
    tx = (2 * box[:, 0] + box[:, 2]) / wid - 1
    ty = (2 * box[:, 1] + box[:, 3]) / hgt - 1
    sign = 1.0 - 2.0 * flip.to(images.device, images.dtype)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [n, images.shape[1], out, out], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def pad_crop_flip(images: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Exact pad-and-crop + flip of uint8 (N, S, S, C) images by integer offsets ``box[:, :2]`` in
    ``[-pad, pad]`` (the policy's :attr:`ViewPolicy.pad`, so no offset is read back from the device).

    The same views as :func:`apply_views` for ``pad_crop`` boxes (zero fill outside the image), done with
    one gather over a zero-padded copy: no interpolation, so pixels are copied exactly and the cost is
    one pass over the batch (several times faster than ``grid_sample`` on a CPU). Returns float
    (N, C, S, S).
    """
    n, s = images.shape[0], images.shape[1]
    dev = images.device
    off = box[:, :2].to(dev).round().long()
    padded = images.new_zeros(n, s + 2 * pad, s + 2 * pad, images.shape[3])
    padded[:, pad : pad + s, pad : pad + s] = images
    ar = torch.arange(s, device=dev)
    rows = (off[:, 1:2] + pad) + ar
    cols = (off[:, 0:1] + pad) + ar
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    out = padded[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).float()
