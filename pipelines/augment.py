"""Batch augmentation on the training device: random erasing, cutout, mixup, cutmix.

Every random choice is a pure function of (seed, epoch, dataset index), drawn from the counter-based
``views.uniforms`` on streams the crop/flip view does not use, and is returned in ``Batch.view`` so that
a batch can be replayed exactly (same keys and meaning on every backend and batch size). The ops act on
whole batches in vectorised tensor code (no per-sample Python loop); the host only draws the boxes,
lambdas and keys (numpy, a few hundred values per sample).

Order (the Loader): crop/flip -> normalise -> mixup/cutmix -> erasing/cutout. This is timm's default
(prefetcher) path, where ``FastCollateMixup`` mixes at collate time and the ``PrefetchLoader`` then
normalises and erases; mixing commutes with the per-channel affine normalisation, so normalising first
changes nothing but float rounding. (timm's ``--no-prefetcher`` path erases per sample before mixing.)

- Random erasing (Zhong et al. 2020, arXiv:1708.04896, Algorithm 1): with probability ``p`` (paper 0.5),
  area ``Se = U(sl, sh) * H * W`` (paper 0.02..0.4), aspect ``re = U(r1, 1/r1)`` (paper r1 = 0.3, drawn
  uniformly, not log-uniformly), ``He = sqrt(Se re)``, ``We = sqrt(Se / re)`` rounded to whole pixels, top-left
  corner ``U(0, W) x U(0, H)`` floored; the try is kept when the box fits inside the image, as the paper's
  ``while True`` loop, capped at ``erasing_tries`` (50: a try fits with probability ~0.30, so all 50 fail
  with probability ~1e-8; then the sample is left as it is, timm's rule). Fill: every pixel and channel of
  the box gets its own uniform value in [0, 255] (the paper's ``Rand(0, 255)``), normalised like the
  image; the values come from a counter-based 32-bit hash computed on the device, keyed by the sample's
  ``erase_key`` and the (channel, y, x) position, so the fill is a pure function too.
- Cutout (DeVries & Taylor 2017, arXiv:1708.04552): one square of side ``round(cutout * res)`` (paper, CIFAR-10:
  16 px at 32, i.e. 0.5), centre uniform over the pixels (so the square is clipped at the border), filled
  with 0 after normalisation, i.e. the mean pixel; applied with probability ``cutout_p`` (paper: always).
- Mixup (Zhang et al. 2018, arXiv:1710.09412) and CutMix (Yun et al. 2019, arXiv:1905.04899) mix
  PAIRS: positions 2k and 2k+1 of the epoch order (``order.epoch_order``) are partners, which keeps pairs
  inside a batch when the batch size is even (required when mixing is on); a last unpaired sample (odd split)
  is not mixed. A pair shares one draw, keyed by the smaller dataset index of the two: whether it is mixed
  (``mix_prob``), mixup or cutmix when both are on (cutmix with probability ``switch_prob`` = 0.5, timm's
  rule, here per pair instead of per batch), ``lam ~ Beta(alpha, alpha)`` by the exact inverse CDF
  (``scipy.special.betaincinv``) and the cutmix box. Each member mixes with the other with the same lam:
  ``x_a' = lam x_a + (1 - lam) x_b`` and ``x_b' = lam x_b + (1 - lam) x_a`` (mixup); cutmix pastes the same
  box of the partner into each, box side ``int(res * sqrt(1 - lam))``, centre uniform, clipped, and lam is
  recomputed as ``1 - clipped box area / image area``. Soft targets: ``lam onehot(y) + (1 - lam) onehot(y_partner)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import betaincinv

from fastkd.errors import UserError

from .views import uniforms

ERASING_STREAMS, CUTOUT_STREAMS, MIX_STREAMS = 100, 1000, 1010  # first uniforms stream of each op
NONE, MIXUP, CUTMIX = 0, 1, 2  # view["mix_kind"]

# The papers' values, used by AugmentConfig.paper().
ERASING_P, ERASING_SCALE, ERASING_RATIO = 0.5, (0.02, 0.4), (0.3, 1 / 0.3)  # Zhong et al., CIFAR/ImageNet
CUTOUT_FRACTION = 0.5  # DeVries & Taylor, CIFAR-10: 16 px at 32 (CIFAR-100 used 8 px, SVHN 20 px)
MIXUP_ALPHA_IMAGENET, MIXUP_ALPHA_CIFAR = 0.2, 1.0  # Zhang et al.
CUTMIX_ALPHA = 1.0  # Yun et al.: lam ~ Beta(1, 1) = U(0, 1)


@dataclass(frozen=True)
class AugmentConfig:
    """What ``Loader(..., augment=...)`` applies to training batches. The defaults switch every op off;
    ``AugmentConfig.paper(...)`` gives the papers' settings."""

    erasing_p: float = 0.0  # probability a sample is erased; 0 = off (paper 0.5)
    erasing_scale: Tuple[float, float] = ERASING_SCALE  # area fraction (sl, sh)
    erasing_ratio: Tuple[float, float] = ERASING_RATIO  # aspect He/We (r1, 1/r1)
    erasing_tries: int = 50  # cap on the paper's retry loop
    cutout: float = 0.0  # side of the cutout square as a fraction of res; 0 = off (paper 0.5 at 32)
    cutout_p: float = 1.0  # probability a sample gets its square (paper 1)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha); 0 = off (paper 0.2 ImageNet, 1.0 CIFAR)
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha); 0 = off (paper 1.0)
    mix_prob: float = 1.0  # probability a pair is mixed at all
    switch_prob: float = 0.5  # probability of cutmix for a pair when both are on

    def __post_init__(self):
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"augmentation: {what}")

        for name in ("erasing_p", "cutout", "cutout_p", "mix_prob", "switch_prob"):
            check(0.0 <= getattr(self, name) <= 1.0, f"{name} must lie in [0, 1], got {getattr(self, name)}")
        lo, hi = self.erasing_scale
        check(0.0 < lo <= hi <= 1.0, f"erasing_scale must satisfy 0 < sl <= sh <= 1, got {self.erasing_scale}")
        lo, hi = self.erasing_ratio
        check(0.0 < lo <= hi, f"erasing_ratio must satisfy 0 < r1 <= r2, got {self.erasing_ratio}")
        check(1 <= self.erasing_tries <= 200, f"erasing_tries must be 1..200, got {self.erasing_tries}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            check(getattr(self, name) >= 0.0, f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def active(self) -> bool:
        return self.mixing or self.erasing_p > 0 or (self.cutout > 0 and self.cutout_p > 0)

    @staticmethod
    def paper(erasing: bool = False, cutout: bool = False, mixup: bool = False, cutmix: bool = False,
              low_res: bool = True) -> "AugmentConfig":
        """The papers' settings for the ops asked for; ``low_res`` picks mixup's CIFAR alpha (1.0) over
        its ImageNet one (0.2)."""
        return AugmentConfig(erasing_p=ERASING_P if erasing else 0.0, cutout=CUTOUT_FRACTION if cutout else 0.0,
                             mixup_alpha=(MIXUP_ALPHA_CIFAR if low_res else MIXUP_ALPHA_IMAGENET) if mixup else 0.0,
                             cutmix_alpha=CUTMIX_ALPHA if cutmix else 0.0)


# ------------------------------------------------------------------------ sampling (host, numpy)


def sample_erasing(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray, res: int) -> Dict[str, np.ndarray]:
    """``erase_box`` (N, 4) int64 ``(x0, y0, w, h)`` in output pixels (w = h = 0: not erased) and
    ``erase_key`` (N,) int64, the 53-bit key of the fill."""
    n, t = len(index), cfg.erasing_tries
    u = uniforms(seed, epoch, index, 2 + 4 * t, offset=ERASING_STREAMS)
    tries = u[:, 2:].reshape(n, t, 4)
    (sl, sh), (r1, r2) = cfg.erasing_scale, cfg.erasing_ratio
    se = res * res * (sl + tries[..., 0] * (sh - sl))
    re = r1 + tries[..., 1] * (r2 - r1)
    h, w = np.round(np.sqrt(se * re)), np.round(np.sqrt(se / re))
    x0, y0 = np.floor(tries[..., 2] * res), np.floor(tries[..., 3] * res)
    fits = (x0 + w <= res) & (y0 + h <= res) & (w >= 1) & (h >= 1)
    first = fits.argmax(1)  # the paper's loop stops at the first box that fits
    take = (u[:, 0] < cfg.erasing_p) & fits.any(1)
    rows = np.arange(n)
    box = np.stack([x0[rows, first], y0[rows, first], w[rows, first], h[rows, first]], 1)
    box[~take] = 0
    return {"erase_box": box.astype(np.int64), "erase_key": np.floor(u[:, 1] * 2.0**53).astype(np.int64)}


def cutout_side(cfg: AugmentConfig, res: int) -> int:
    return max(1, int(round(cfg.cutout * res)))


def _square(cx: np.ndarray, cy: np.ndarray, side: np.ndarray, res: int) -> np.ndarray:
    """``(x0, y0, w, h)`` of the ``side`` square whose centre pixel is (cx, cy), clipped to the image."""
    x0, y0 = cx - side // 2, cy - side // 2
    x1, y1 = np.clip(x0 + side, 0, res), np.clip(y0 + side, 0, res)
    x0, y0 = np.clip(x0, 0, res), np.clip(y0, 0, res)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1).astype(np.int64)


def sample_cutout(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray, res: int) -> Dict[str, np.ndarray]:
    """``cutout_box`` (N, 4) int64 ``(x0, y0, w, h)``, clipped (w = h = 0: no cutout)."""
    u = uniforms(seed, epoch, index, 3, offset=CUTOUT_STREAMS)
    side = np.full(len(u), cutout_side(cfg, res), dtype=np.int64)
    box = _square(np.floor(u[:, 1] * res).astype(np.int64), np.floor(u[:, 2] * res).astype(np.int64), side, res)
    box[u[:, 0] >= cfg.cutout_p] = 0
    return {"cutout_box": box}


def pair_positions(start: int, n: int) -> np.ndarray:
    """Batch position of each sample's partner, for a batch at positions ``start..start+n-1`` of the epoch
    order: global positions 2k and 2k+1 pair up; a sample whose partner is outside the batch gets itself."""
    local = ((start + np.arange(n)) ^ 1) - start
    return np.where((local >= 0) & (local < n), local, np.arange(n)).astype(np.int64)


def sample_mixing(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray, partner: np.ndarray,
                  res: int) -> Dict[str, np.ndarray]:
    """Per sample, given its partner's dataset index (its own when unpaired): ``mix_partner``, ``mix_lam``
    (float32, 1 when unmixed), ``mix_kind`` (NONE/MIXUP/CUTMIX, uint8), ``mix_box`` (N, 4) int64 cutmix box."""
    index, partner = np.asarray(index, np.int64), np.asarray(partner, np.int64)
    u = uniforms(seed, epoch, np.minimum(index, partner), 5, offset=MIX_STREAMS)  # one draw per pair
    mixed = (index != partner) & (u[:, 0] < cfg.mix_prob)
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        cut = u[:, 1] < cfg.switch_prob
    else:
        cut = np.full(len(u), cfg.cutmix_alpha > 0)
    kind = np.where(mixed, np.where(cut, CUTMIX, MIXUP), NONE).astype(np.uint8)
    lam, box = np.ones(len(u)), np.zeros((len(u), 4), dtype=np.int64)
    for k, alpha in ((MIXUP, cfg.mixup_alpha), (CUTMIX, cfg.cutmix_alpha)):
        sel = kind == k
        if sel.any():
            lam[sel] = betaincinv(alpha, alpha, u[sel, 2])
    sel = kind == CUTMIX
    if sel.any():
        side = np.floor(res * np.sqrt(1.0 - lam[sel])).astype(np.int64)
        box[sel] = _square(np.floor(u[sel, 3] * res).astype(np.int64), np.floor(u[sel, 4] * res).astype(np.int64),
                           side, res)
        lam[sel] = 1.0 - box[sel, 2] * box[sel, 3] / float(res * res)
    return {"mix_partner": partner, "mix_lam": lam.astype(np.float32), "mix_kind": kind, "mix_box": box}


# ------------------------------------------------------------------------------ applying (device, torch)


def box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool (N, 1, H, W): inside each ``(x0, y0, w, h)`` box."""
    ys = torch.arange(height, device=box.device).view(1, height, 1)
    xs = torch.arange(width, device=box.device).view(1, 1, width)
    x0, y0, w, h = (v.view(-1, 1, 1) for v in box.unbind(1))
    return ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)).unsqueeze(1)


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` < 2**32, split in 16-bit halves so nothing overflows int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a 32-bit integer hash, exact on every device."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keyed_uniforms(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in [0, 1) from a keyed hash of int64 ``counter`` (< 2**32) and 53-bit ``key``."""
    h = _hash32(_hash32(counter ^ (key & _M32)) ^ (key >> 32))
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def fill_uniforms(key: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """float32 (N, C, H, W): the erasing fill's uniforms of every (channel, y, x) counter of each key."""
    counter = torch.arange(channels * height * width, device=key.device, dtype=torch.int64)
    return _keyed_uniforms(counter.view(1, channels, height, width), key.to(torch.int64).view(-1, 1, 1, 1))


def apply_erasing(x: torch.Tensor, box: torch.Tensor, key: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> torch.Tensor:
    """Replace each box by per-pixel uniform values in [0, 255] (``fill_uniforms``), normalised with
    ``mean``/``std`` (1, C, 1, 1). Only the pixels inside the boxes are hashed."""
    n, c, h, w = x.shape
    flat = box_mask(box, h, w).expand(n, c, h, w).reshape(-1).nonzero().squeeze(1)
    sample, counter = flat // (c * h * w), flat % (c * h * w)
    channel = counter // (h * w)
    u = _keyed_uniforms(counter, key.to(torch.int64)[sample])
    fill = (u * 255.0 - mean.reshape(-1)[channel]) / std.reshape(-1)[channel]
    return x.reshape(-1).index_put((flat,), fill.to(x.dtype)).view_as(x)


def apply_cutout(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Zero each box (0 after normalisation: the mean pixel)."""
    return x.masked_fill(box_mask(box, x.shape[2], x.shape[3]), 0.0)


def apply_mixing(x: torch.Tensor, partner_pos: torch.Tensor, lam: torch.Tensor, kind: torch.Tensor,
                 box: torch.Tensor) -> torch.Tensor:
    """Mixup rows: ``lam x + (1 - lam) x[partner_pos]``; cutmix rows: the partner's pixels inside ``box``."""
    other = x.index_select(0, partner_pos)
    lam4 = lam.to(x.dtype).view(-1, 1, 1, 1)
    out = torch.where((kind == MIXUP).view(-1, 1, 1, 1), lam4 * x + (1 - lam4) * other, x)
    cut = box_mask(box, x.shape[2], x.shape[3]) & (kind == CUTMIX).view(-1, 1, 1, 1)
    return torch.where(cut, other, out)


def mix_targets(labels: torch.Tensor, partner_pos: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 (N, num_classes): ``lam onehot(y) + (1 - lam) onehot(y[partner_pos])``."""
    onehot = F.one_hot(labels, num_classes).to(torch.float32)
    lam = lam.to(torch.float32).view(-1, 1)
    return lam * onehot + (1 - lam) * onehot.index_select(0, partner_pos)


class Augmenter:
    """Applies an ``AugmentConfig`` to normalised batches; the Loader calls it with each batch's position
    ``start`` in the epoch order. Returns the images, the soft targets (None without mixing) and the view
    entries (on the images' device)."""

    def __init__(self, cfg: AugmentConfig, seed: int, res: int, mean: torch.Tensor, std: torch.Tensor,
                 num_classes: int):
        self.cfg, self.seed, self.res, self.num_classes = cfg, seed, res, num_classes
        self.mean, self.std = mean, std  # (1, C, 1, 1) on the 0..255 scale

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, index: np.ndarray, start: int,
                 epoch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        cfg, dev, view, targets = self.cfg, x.device, {}, None
        if cfg.mixing:
            pos = pair_positions(start, len(index))
            s = sample_mixing(cfg, self.seed, epoch, index, index[pos], self.res)
            view.update({k: torch.from_numpy(v).to(dev) for k, v in s.items()})
            pos_t = torch.from_numpy(pos).to(dev)
            x = apply_mixing(x, pos_t, view["mix_lam"], view["mix_kind"], view["mix_box"])
            targets = mix_targets(labels, pos_t, view["mix_lam"], self.num_classes)
        if cfg.erasing_p > 0:
            s = sample_erasing(cfg, self.seed, epoch, index, self.res)
            view.update({k: torch.from_numpy(v).to(dev) for k, v in s.items()})
            x = apply_erasing(x, view["erase_box"], view["erase_key"], self.mean, self.std)
        if cfg.cutout > 0 and cfg.cutout_p > 0:
            box = sample_cutout(cfg, self.seed, epoch, index, self.res)["cutout_box"]
            view["cutout_box"] = torch.from_numpy(box).to(dev)
            x = apply_cutout(x, view["cutout_box"])
        return x, targets, view
