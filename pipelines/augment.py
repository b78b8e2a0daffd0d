"""Batch augmentation on the training device: random erasing, cutout, mixup, cutmix.

Every random choice is a pure function of (seed, epoch, dataset index), drawn from the counter-based
``view_policy.uniforms`` on streams the crop/flip view does not use, and is returned in ``Batch.view``
(``loader.ViewParams``) so that a batch can be replayed exactly (same entries and meaning on every backend
and batch size). The ops act on
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
  the box gets its own random pixel value in 0..255 (the paper's ``Rand(0, 255)``), normalised like the
  image; the values are windows of a fixed hashed byte table at offsets hashed from the sample's
  ``erase_key`` (``fill_values``), so the fill is a pure function of the key too.
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
from fastkd.hashing import hash32

from .view_policy import uniforms

ERASING_STREAMS, CUTOUT_STREAMS, MIX_STREAMS = 100, 1000, 1010  # first uniforms stream of each op
NONE, MIXUP, CUTMIX = 0, 1, 2  # ViewParams.mix_kind

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


ERASING_FIRST_TRIES = 10  # drawn for every sample; the rest only for the few whose first tries all miss


def _erasing_tries(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray, res: int, first: int,
                   count: int) -> Tuple[np.ndarray, ...]:
    """Tries ``first .. first + count - 1`` of each sample: boxes ``(x0, y0, w, h)`` (N, count) and fits."""
    u = uniforms(seed, epoch, index, 4 * count, offset=ERASING_STREAMS + 2 + 4 * first).reshape(len(index), count, 4)
    (sl, sh), (r1, r2) = cfg.erasing_scale, cfg.erasing_ratio
    se = res * res * (sl + u[..., 0] * (sh - sl))
    re = r1 + u[..., 1] * (r2 - r1)
    h, w = np.round(np.sqrt(se * re)), np.round(np.sqrt(se / re))
    x0, y0 = np.floor(u[..., 2] * res), np.floor(u[..., 3] * res)
    return x0, y0, w, h, (x0 + w <= res) & (y0 + h <= res) & (w >= 1) & (h >= 1)


def sample_erasing(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray, res: int) -> Dict[str, np.ndarray]:
    """``erase_box`` (N, 4) int64 ``(x0, y0, w, h)`` in output pixels (w = h = 0: not erased) and
    ``erase_key`` (N,) int64, the 53-bit key of the fill. Try ``t`` of a sample is its streams
    ``ERASING_STREAMS + 2 + 4t ..+3``, whether or not it is drawn: the first ``ERASING_FIRST_TRIES`` are drawn
    for all, the rest only for the samples (about 3%) still without a box, with the same result."""
    index = np.asarray(index)
    n = len(index)
    u = uniforms(seed, epoch, index, 2, offset=ERASING_STREAMS)
    box = np.zeros((n, 4))
    todo = np.flatnonzero(u[:, 0] < cfg.erasing_p)  # erased if one of its tries fits
    first = 0
    while len(todo) and first < cfg.erasing_tries:
        count = cfg.erasing_tries - first if first else min(ERASING_FIRST_TRIES, cfg.erasing_tries)
        x0, y0, w, h, fits = _erasing_tries(cfg, seed, epoch, index[todo], res, first, count)
        hit = fits.any(1)
        t = fits.argmax(1)[hit]  # the paper's loop stops at the first box that fits
        rows = np.flatnonzero(hit)
        box[todo[hit]] = np.stack([x0[rows, t], y0[rows, t], w[rows, t], h[rows, t]], 1)
        todo, first = todo[~hit], first + count
    return {"erase_box": box.astype(np.int64), "erase_key": np.floor(u[:, 1] * 2.0**53).astype(np.int64)}


def cutout_side(cfg: AugmentConfig, res: int) -> int:
    return max(1, int(round(cfg.cutout * res)))


def _square(cx: np.ndarray, cy: np.ndarray, side: np.ndarray, res: int) -> np.ndarray:
    """``(x0, y0, w, h)`` of the ``side`` square whose centre pixel is (cx, cy), clipped to the image."""
    lo = np.stack([cx, cy], 1) - (side // 2)[:, None]  # (x0, y0); np.clip is several times slower
    hi = np.minimum(lo + side[:, None], res)
    lo = np.maximum(lo, 0)
    return np.concatenate([lo, np.maximum(hi - lo, 0)], 1).astype(np.int64)


def sample_cutout(cfg: AugmentConfig, seed: int, epoch: int, index: np.ndarray, res: int) -> Dict[str, np.ndarray]:
    """``cutout_box`` (N, 4) int64 ``(x0, y0, w, h)``, clipped (w = h = 0: no cutout)."""
    u = uniforms(seed, epoch, index, 3, offset=CUTOUT_STREAMS)
    side = np.full(len(u), cutout_side(cfg, res), dtype=np.int64)
    box = _square(np.floor(u[:, 1] * res).astype(np.int64), np.floor(u[:, 2] * res).astype(np.int64), side, res)
    box[u[:, 0] >= cfg.cutout_p] = 0
    return {"cutout_box": box}


def pair_positions(start: int, n: int, views_per_image: int = 1) -> np.ndarray:
    """Batch position of each sample's partner, for a batch at positions ``start..start+n-1`` of the epoch
    order: global positions 2k and 2k+1 pair up; a sample whose partner is outside the batch gets itself.
    With K views per image (each photo K times in a row) photos 2j and 2j+1 pair up, view k with view k."""
    k = views_per_image
    pos = start + np.arange(n)
    local = (((pos // k) ^ 1) * k + pos % k) - start
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


def box_inside(box: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 1, H, W) of ``dtype``: 1 inside each ``(x0, y0, w, h)`` box, 0 outside; the outer product of each
    box's column and row indicators (a broadcast multiply: boolean broadcasts are several times slower on a CPU)."""
    lo = box[:, :2].unsqueeze(2)  # (N, 2, 1): x0, y0
    at = torch.arange(max(height, width), device=box.device)
    m = ((at >= lo) & (at < lo + box[:, 2:].unsqueeze(2))).to(dtype)  # (N, 2, L): columns, rows
    return (m[:, 1, :height].unsqueeze(2) * m[:, 0, :width].unsqueeze(1)).unsqueeze(1)


def box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool (N, 1, H, W): inside each ``(x0, y0, w, h)`` box."""
    return box_inside(box, height, width, torch.uint8).bool()


_FILL_KEY = 0x5EED_F1_11  # the fill banks' fixed hash key
_BANKS: Dict[str, torch.Tensor] = {}  # device -> the longest fill bank built there


def fill_bank(length: int, device) -> torch.Tensor:
    """uint8 (2, >= length): ``bank[r, j]``, the top byte of the keyed hash of ``r * 2**31 + j``: uniform
    over 0..255 and a pure function of (r, j); built once per device, then cached (2 MiB at 32 x 32)."""
    dev = torch.device(device)
    cached = _BANKS.get(str(dev))
    if cached is None or cached.shape[1] < length:
        counter = (torch.arange(2, device=dev, dtype=torch.int64).view(-1, 1) << 31) + torch.arange(
            length, device=dev, dtype=torch.int64)
        cached = (hash32(hash32(counter ^ _FILL_KEY)) >> 24).to(torch.uint8)
        _BANKS[str(dev)] = cached
    return cached


def fill_span(channels: int, height: int, width: int) -> int:
    """Number of window offsets into each fill bank row: 2**20, or 64 windows' length for large images."""
    return max(1 << 20, 64 * channels * height * width)


def fill_values(key: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """uint8 (N, C, H, W): the erasing fill of each key, a pixel value in 0..255 per (channel, y, x).

    The sum modulo 256 of two windows of the cached ``fill_bank``, row 0 at offset ``o1 = key mod span`` and
    row 1 at ``o2 = ((key >> 20) xor (key >> 40)) mod span`` (``fill_span``; the keys are uniform 53-bit
    numbers, so the two offsets are independent and every bit of the key counts): within a sample the values are i.i.d.
    uniform over 0..255, as the paper's ``Rand(0, 255)`` on 8-bit images; two samples share values only
    where both of their offsets fall within a window's length of each other (about (2 CHW / span)**2 per
    pair: 4e-5 at 32 x 32). Two contiguous gathers instead of a per-pixel hash, exact on every device."""
    chw, span = channels * height * width, fill_span(channels, height, width)
    windows = fill_bank(span + chw, key.device).unfold(1, chw, 1)  # (2, >= span + 1, CHW): no copy
    key = key.to(torch.int64)
    o1, o2 = key % span, ((key >> 20) ^ (key >> 40)) % span
    fill = windows[0].index_select(0, o1) + windows[1].index_select(0, o2)  # uint8 wraps: mod 256
    return fill.view(-1, channels, height, width)


def apply_erasing(x: torch.Tensor, box: torch.Tensor, key: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, rows: Optional[torch.Tensor] = None, inplace: bool = False,
                  inside: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Replace each box by random pixel values in 0..255 (``fill_values``), normalised with ``mean``/``std``
    (1, C, 1, 1). ``rows``: the samples with a box, if known (saves a device sync); ``inplace``: write
    into ``x`` (the Loader's own fresh batch) instead of a copy; ``inside``: ``box_inside`` of ``box[rows]``
    if already computed."""
    n, c, h, w = x.shape
    if rows is None:
        rows = (box[:, 2] > 0).nonzero().squeeze(1)
    if len(rows) == 0:
        return x if inplace else x.clone()  # always a batch the caller may overwrite
    fill = fill_values(key.index_select(0, rows), c, h, w).to(x.dtype).sub_(mean).div_(std)
    if inside is None:
        inside = box_inside(box.index_select(0, rows), h, w, x.dtype)
    erased = x.index_select(0, rows).lerp_(fill, inside)  # exact at weights 0 and 1
    return (x if inplace else x.clone()).index_copy_(0, rows, erased)


def apply_cutout(x: torch.Tensor, box: torch.Tensor, inplace: bool = False,
                 inside: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero each box (0 after normalisation: the mean pixel); ``inplace``: in ``x`` itself; ``inside``:
    ``box_inside(box)`` if already computed. ``x - x * inside``: one op, exact (x - x = 0, x - 0 = x)."""
    if inside is None:
        inside = box_inside(box, x.shape[2], x.shape[3], x.dtype)
    return x.addcmul_(x, inside, value=-1) if inplace else torch.addcmul(x, x, inside, value=-1)


def apply_mixing(x: torch.Tensor, partner_pos: torch.Tensor, lam: torch.Tensor, kind: torch.Tensor,
                 box: torch.Tensor, inside: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mixup rows: ``lam x + (1 - lam) x[partner_pos]``; cutmix rows: the partner's pixels inside ``box``
    (``inside``: ``box_inside(box)`` if already computed; it must be 0 on rows that are not cutmix).

    One ``torch.lerp(partner, x, weight)`` with a per-pixel weight: lam on mixup rows, 0 inside the cutmix
    box and 1 elsewhere (lerp returns its ends exactly at weights 0 and 1)."""
    other = x.index_select(0, partner_pos)
    keep = torch.where(kind == MIXUP, lam.to(x.dtype), torch.ones((), dtype=x.dtype, device=x.device))
    if inside is None:
        inside = box_inside(box * (kind == CUTMIX).view(-1, 1), x.shape[2], x.shape[3], x.dtype)
    return torch.lerp(other, x, torch.addcmul(keep.view(-1, 1, 1, 1), keep.view(-1, 1, 1, 1), inside, value=-1))


def mix_targets(labels: torch.Tensor, partner_pos: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 (N, num_classes): ``lam onehot(y) + (1 - lam) onehot(y[partner_pos])``."""
    onehot = F.one_hot(labels, num_classes).to(torch.float32)
    lam = lam.to(torch.float32).view(-1, 1)
    return lam * onehot + (1 - lam) * onehot.index_select(0, partner_pos)


class Augmenter:
    """Applies an ``AugmentConfig`` to normalised batches; the Loader calls it with each batch's position
    ``start`` in the epoch order. Returns the images, the soft targets (None without mixing) and the view
    entries (on the images' device) by their ``loader.ViewParams`` field names."""

    def __init__(self, cfg: AugmentConfig, seed: int, res: int, mean: torch.Tensor, std: torch.Tensor,
                 num_classes: int):
        self.cfg, self.seed, self.res, self.num_classes = cfg, seed, res, num_classes
        self.mean, self.std = mean, std  # (1, C, 1, 1) on the 0..255 scale

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, index: np.ndarray, start: int, epoch: int,
                 inplace: bool = False, views_per_image: int = 1
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """``inplace``: ``x`` may be overwritten (the Loader's own fresh batch); otherwise a copy is. ``index``:
        the views' keys (``view_policy.view_keys``: the dataset index with one view per image), so that
        ``mix_partner`` is the partner view's key."""
        cfg, dev, targets = self.cfg, x.device, None
        host, boxes = {}, []  # the sampled entries (numpy), and the boxes whose masks are needed
        if cfg.mixing:
            pos = pair_positions(start, len(index), views_per_image)
            host.update(sample_mixing(cfg, self.seed, epoch, index, index[pos], self.res))
            boxes.append(host["mix_box"])  # all zero on the rows that are not cutmix
        if cfg.erasing_p > 0:
            host.update(sample_erasing(cfg, self.seed, epoch, index, self.res))
            erased = np.flatnonzero(host["erase_box"][:, 2] > 0)
            boxes.append(host["erase_box"][erased])
        if cfg.cutout > 0 and cfg.cutout_p > 0:
            host.update(sample_cutout(cfg, self.seed, epoch, index, self.res))
            boxes.append(host["cutout_box"])
        view = {k: torch.from_numpy(v).to(dev) for k, v in host.items()}
        # every mask of the batch in one call: (boxes, 1, H, W), split below in the order of ``boxes``
        inside = box_inside(torch.from_numpy(np.concatenate(boxes)).to(dev), x.shape[2], x.shape[3], x.dtype)
        parts = iter(inside.split([len(b) for b in boxes]))
        if not inplace and not cfg.mixing:  # mixing writes a new batch; the other ops then work in place
            x = x.clone()
        if cfg.mixing:
            pos_t = torch.from_numpy(pos).to(dev)
            x = apply_mixing(x, pos_t, view["mix_lam"], view["mix_kind"], view["mix_box"], next(parts))
            targets = mix_targets(labels, pos_t, view["mix_lam"], self.num_classes)
        if cfg.erasing_p > 0:
            rows = torch.from_numpy(erased).to(dev)
            x = apply_erasing(x, view["erase_box"], view["erase_key"], self.mean, self.std, rows, True, next(parts))
        if cfg.cutout > 0 and cfg.cutout_p > 0:
            x = apply_cutout(x, view["cutout_box"], True, next(parts))
        return x, targets, view
