"""Augmented views as pure functions of (seed, epoch, dataset index), and cutting them from batches.

The random choices of each sample's view are drawn from a counter-based hash (splitmix64) of (seed,
epoch, index), so they do not depend on batch composition, worker count or backend, and a view can be
replayed exactly later (teacher-output cache).

Policies (chosen from the training resolution):
- ``pad_crop`` (res <= 64, the CIFAR recipe): backends deliver ``S x S`` base images (shorter side to S,
  centre square); pad by S/8 (4 px at 32) with zeros, random crop, flip, cut on the training device.
- ``rrc`` (higher res, the ImageNet recipe): the box is drawn on the whole STORED image, in its own
  pixels ``(x0, y0, w, h)``, from its stored ``(width, height)``: RandomResizedCrop with torchvision's
  exact rule (area uniform in scale (0.08, 1), log-ratio uniform in (3/4, 4/3), first of 10 tries
  that fits, ``x0``/``y0`` uniform over the whole pixels; else the centre crop with the ratio clamped),
  then flip. Evaluation is torchvision's ``Resize(res/0.875)`` + ``CenterCrop(res)``, i.e. the centred
  box of side about ``min(w, h) * res / base`` in stored pixels (torchvision's rounding kept). Backends cut the box while decoding
  (``decode.py``) and deliver ``res x res``; the Loader flips.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastkd.hashing import GOLDEN, mix64


#: ``--views-per-image K``: view ``k`` of photo ``i`` draws its randomness as the sample ``i + k * VIEW_STRIDE``, so view
#: 0 is the photo's one view of K = 1 and the views of one photo are independent draws (datasets hold < 2**40 images)
VIEW_STRIDE = 1 << 40


def view_keys(index, k=None) -> np.ndarray:
    """int64 keys the views' random streams are drawn from: ``index + k * VIEW_STRIDE`` (``index`` when ``k`` is
    None: one view per image)."""
    index = np.asarray(index, dtype=np.int64)
    return index if k is None else index + np.asarray(k, dtype=np.int64) * VIEW_STRIDE


def view_numbers(n: int, views_per_image: int) -> "np.ndarray | None":
    """``k`` of each of ``n`` consecutive positions of an epoch order that repeats each photo ``views_per_image``
    times from a position that is a multiple of it (every batch starts at one): ``arange(n) % K``; None for K = 1."""
    return None if views_per_image == 1 else np.arange(n, dtype=np.int64) % views_per_image


@functools.lru_cache(maxsize=64)
def _epoch_key(seed: int, epoch: int) -> np.ndarray:
    """The (seed, epoch) part of every stream's hash (a read-only uint64 array of one element)."""
    key = mix64(np.array([seed], dtype=np.uint64) * GOLDEN + mix64(np.array([epoch], dtype=np.uint64) + GOLDEN))
    key.flags.writeable = False
    return key


def uniforms(seed: int, epoch: int, index: np.ndarray, count: int, offset: int = 0) -> np.ndarray:
    """``(len(index), count)`` float64 uniforms in [0, 1), a pure function of (seed, epoch, index).

    Column ``j`` is stream ``offset + j`` of the sample; a stream's values depend on neither ``count`` nor
    ``offset``, so disjoint stream ranges are independent draws. The crop/flip view uses streams 0..40,
    ``augment.py`` streams 100 and above.
    """
    index = np.asarray(index, dtype=np.uint64).reshape(-1, 1)
    h = mix64(_epoch_key(seed, epoch) ^ mix64(index + GOLDEN))
    streams = mix64(h + np.arange(offset + 1, offset + count + 1, dtype=np.uint64) * GOLDEN)
    return (streams >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class ViewPolicy:
    base: int  # S: pad_crop's square base image; rrc: torchvision's eval Resize side (res / 0.875)
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

    def sample(self, seed: int, epoch: int, index: np.ndarray, sizes=None) -> Dict[str, np.ndarray]:
        """Crop box ``(x0, y0, w, h)`` and a flip flag for each index.

        pad_crop: boxes in base pixels. rrc: boxes in the pixels of each stored image, whose
        ``(width, height)`` rows ``sizes`` gives (None: the ``base x base`` square).
        """
        n = len(index)
        if sizes is None:
            sizes = np.full((n, 2), float(self.base))
        wid, hgt = (np.asarray(sizes, dtype=np.float64).reshape(n, 2).T if n else (np.zeros(0), np.zeros(0)))
        if not self.train:
            if self.kind == "pad_crop":
                s = float(self.base)
                return {"box": np.tile([0.0, 0.0, s, s], (n, 1)), "flip": np.zeros(n, dtype=bool)}
            return {"box": self._centre_boxes(wid, hgt), "flip": np.zeros(n, dtype=bool)}
        # flip, then the pad offsets (streams 1, 2) or 10 RRC tries x (area, ratio, x, y) (streams 1..40)
        u = uniforms(seed, epoch, index, 3 if self.kind == "pad_crop" else 41)
        flip = (u[:, 0] < 0.5) if self.flip else np.zeros(n, dtype=bool)
        if self.kind == "pad_crop":
            s, pad = float(self.base), self.pad
            dx = np.floor(u[:, 1] * (2 * pad + 1)) - pad
            dy = np.floor(u[:, 2] * (2 * pad + 1)) - pad
            return {"box": np.stack([dx, dy, np.full(n, s), np.full(n, s)], 1), "flip": flip}
        return {"box": self._rrc_boxes(u[:, 1:], wid, hgt), "flip": flip}

    def _centre_boxes(self, wid: np.ndarray, hgt: np.ndarray) -> np.ndarray:
        """torchvision's ``Resize(base)`` (shorter side to base, longer side truncated) then
        ``CenterCrop(out)`` (offsets rounded), as a box in stored pixels."""
        short = np.maximum(np.minimum(wid, hgt), 1)
        new_w = np.where(wid <= hgt, self.base, np.floor(self.base * wid / short))
        new_h = np.where(wid <= hgt, np.floor(self.base * hgt / short), self.base)
        sx, sy = wid / new_w, hgt / new_h
        left, top = np.round((new_w - self.out) / 2), np.round((new_h - self.out) / 2)
        return np.stack([left * sx, top * sy, self.out * sx, self.out * sy], 1)

    def _rrc_boxes(self, u: np.ndarray, wid, hgt=None) -> np.ndarray:
        """torchvision's ``RandomResizedCrop.get_params`` on ``wid x hgt`` images (arrays or scalars),
        vectorised, with tries ``t`` taking uniforms ``u[:, 4t : 4t + 4]`` as (area, ratio, x, y)."""
        n = len(u)
        wid = np.broadcast_to(np.asarray(wid, dtype=np.float64), (n,))
        hgt = wid if hgt is None else np.broadcast_to(np.asarray(hgt, dtype=np.float64), (n,))
        area = wid * hgt
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        # fallback: the centre crop, the ratio clamped to [ratio[0], ratio[1]]
        in_ratio = wid / np.maximum(hgt, 1)
        fw = np.where(in_ratio > self.ratio[1], np.round(hgt * self.ratio[1]), wid)
        fh = np.where(in_ratio < self.ratio[0], np.round(wid / self.ratio[0]), hgt)
        boxes = np.stack([np.floor((wid - fw) / 2), np.floor((hgt - fh) / 2), fw, fh], 1)
        done = np.zeros(n, dtype=bool)
        for t in range(10):
            ua, ur, ux, uy = u[:, 4 * t], u[:, 4 * t + 1], u[:, 4 * t + 2], u[:, 4 * t + 3]
            a = area * (self.scale[0] + ua * (self.scale[1] - self.scale[0]))
            r = np.exp(lo + ur * (hi - lo))
            w, h = np.round(np.sqrt(a * r)), np.round(np.sqrt(a / r))
            ok = ~done & (w <= wid) & (h <= hgt) & (w > 0) & (h > 0)
            x0, y0 = np.floor(ux * (wid - w + 1)), np.floor(uy * (hgt - h + 1))
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
