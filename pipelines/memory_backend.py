"""Memory backend: the whole split, decoded once, as one uint8 tensor on the training device.

(Photos with RandomResizedCrop views: held whole, at their stored size when the split fits the limit, else
at a capped side, ``held_photos.py``.)

For small images (CIFAR, MNIST, ImageNet32, Tiny-ImageNet) decoding is the whole cost of a loader, and
the decoded split is small (CIFAR-10 train at 32: 50,000 x 32 x 32 x 3 = 147 MiB). This backend decodes
every sample of the split once, at construction, with exactly the torch backend's decode path
(``decode.base_image``, in ``cfg.workers`` DataLoader worker processes), into one
``(N, S, S, 3)`` uint8 tensor on ``cfg.device`` (chunk by chunk through pinned host memory when that is
a GPU, so the host never holds the whole split), plus the labels; it prints how long that took
(also ``backend.decode_s``). An epoch is then no Python per-sample work: for the pad-and-crop
views of small images (the Loader sets ``BackendConfig.pad``), the split is held channels-first inside
its zero padding and, when twice that fits the limit, with a mirrored copy, so that a batch of views,
crop and flip included, is one gather from the held split straight into (B, 3, S, S) (:meth:`crop`; the
airbench approach); otherwise batches are ``torch.index_select`` of each batch's indices and the
Loader's vectorised views do the rest.

It needs neither ffcv nor DALI, only the conversion's shards (``--formats dali``). It refuses, with a
UserError naming the size and the fix, a split whose decoded tensor exceeds its limit: by default 8 GiB
(and the free memory) on a GPU, 80% of the available RAM on the CPU; ``FASTKD_MEMORY_LIMIT`` (bytes, or
with a K/M/G/T suffix, e.g. ``16G``) or ``MemoryBackend.limit_bytes`` sets another.
"""
from __future__ import annotations

import math
import os
import time
from typing import Iterator, Optional

import numpy as np
import torch

from fastkd.errors import UserError
from fastkd.log import log
from fastkd.sizes import format_bytes

from . import register_backend
from .backend import Backend, BackendConfig, IndexBatch, RawBatch, worker_batches
from .order import num_batches

ENV_LIMIT = "FASTKD_MEMORY_LIMIT"
CUDA_DEFAULT_LIMIT = 8 << 30
HOST_FRACTION = 0.8  # of the available RAM
DECODE_CHUNK = 256  # samples per decode task


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"`` or a plain byte count -> bytes (binary units)."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if scale > 1 else s)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value * scale >= 1):  # inf, nan, negative, zero, garbage
        raise UserError(f"{ENV_LIMIT}={text!r} is not a size; give bytes or e.g. 512M, 16G")
    return int(value * scale)


def available_ram() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else physical memory from sysconf, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit(device: torch.device, override: Optional[int] = None) -> tuple:
    """``(limit in bytes or None, what it is)`` for a split held on ``device``."""
    env = os.environ.get(ENV_LIMIT)
    if override is not None:
        return int(override), "MemoryBackend.limit_bytes"
    if env:
        return parse_bytes(env), f"{ENV_LIMIT}={env}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if free < CUDA_DEFAULT_LIMIT:
            return int(free), f"the free memory of {device}"
        return CUDA_DEFAULT_LIMIT, f"the default for {device}, {format_bytes(CUDA_DEFAULT_LIMIT)}"
    ram = available_ram()
    if ram is None:
        return None, "unknown"
    return int(ram * HOST_FRACTION), f"{HOST_FRACTION:.0%} of the available RAM, {format_bytes(ram)}"


@register_backend("memory")
class MemoryBackend(Backend):
    """``images``: uint8 (N, S, S, 3) and ``labels``: int64 (N,) of the whole split, on ``cfg.device``."""

    reads = "dali"  # the shards
    limit_bytes: Optional[int] = None  # None: FASTKD_MEMORY_LIMIT, else the device's default (see module doc)
    pad: int = 0  # the zero padding the held split carries: pad-and-crop views are cut here for pads up to it

    def __init__(self, cfg: BackendConfig):
        super().__init__(cfg)
        t0 = time.perf_counter()
        reader = cfg.data.shard_reader(cfg.split)
        n, side, dev, pad = len(reader), int(cfg.base), cfg.device, int(cfg.pad)
        self.labels = torch.from_numpy(np.ascontiguousarray(reader.table["label"], dtype=np.int64)).to(dev)
        self.held = None
        if cfg.policy is not None and cfg.policy.kind == "rrc":  # photos: held whole, views cut every epoch
            self._hold_photos(reader, t0)
            return
        full = side + 2 * pad
        self.pad, self.nbytes = pad, n * 3 * full * full
        limit, why = memory_limit(dev, self.limit_bytes)
        if limit is not None and self.nbytes > limit:
            padded = f", zero-padded to {full}x{full} for pad-and-crop" if pad else ""
            raise UserError(
                f"the memory backend would hold the {n} {cfg.split} images of {cfg.data.root} decoded at "
                f"{side}x{side}x3 uint8{padded}, {format_bytes(self.nbytes)} on {dev}, over its limit of "
                f"{format_bytes(limit)} ({why}); use another backend (--backend torch, dali or ffcv) or a smaller "
                f"--res, or raise the limit with --memory-limit {-(-self.nbytes // (1 << 30)) + 1}G (or {ENV_LIMIT}) if it fits")
        # pad-and-crop (pad > 0): stored channels-first inside its zero padding, so that a batch of views is
        # one gather straight into (B, 3, S, S), and, where there is room, with a mirrored copy that makes
        # flipped views the same gather; ``images`` is always the (N, S, S, 3) view of the decoded pixels
        mirror = pad > 0 and (limit is None or 2 * self.nbytes <= limit)
        if pad:
            store = torch.zeros((1 + mirror, n, 3, full, full), dtype=torch.uint8, device=dev)
            self.images = store[0, :, :, pad : pad + side, pad : pad + side].permute(0, 2, 3, 1)
        else:
            self.images = torch.empty((n, side, side, 3), dtype=torch.uint8, device=dev)
        self._decode(reader, self.images, cfg.workers, cfg.split)
        self._windows = self._mirror_windows = None
        if pad:  # every crop of every image as a strided view (N, 3, 2p+1, 2p+1, S, S): no copy
            self._windows = store[0].unfold(2, side, 1).unfold(3, side, 1)
        if mirror:
            for i in range(0, n, DECODE_CHUNK * 16):  # chunk by chunk: no third copy of the split
                store[1, i : i + DECODE_CHUNK * 16] = store[0, i : i + DECODE_CHUNK * 16].flip(3)
            self._mirror_windows = store.unfold(3, side, 1).unfold(4, side, 1)
            self.nbytes *= 2
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.decode_s = time.perf_counter() - t0
        log(f"memory backend: {n} {cfg.split} images decoded at {side}x{side} into {format_bytes(self.nbytes)} "
            f"on {dev} in {self.decode_s:.2f} s ({cfg.workers} workers)")

    def _hold_photos(self, reader, t0: float) -> None:
        """Photos whole at their stored size when the split fits the limit (views then exactly the torch
        backend's boxes, on the same pixels), else with the shorter side capped at the policy's base."""
        from .decode import failure
        from .held_photos import HeldPhotos

        cfg, n = self.cfg, len(reader)
        limit, why = memory_limit(cfg.device, self.limit_bytes)
        self.held = HeldPhotos(reader, None, cfg.device)
        if limit is not None and self.held.nbytes > limit:
            self.held = HeldPhotos(reader, cfg.policy.base, cfg.device)
        self.nbytes = self.held.nbytes
        if limit is not None and self.nbytes > limit:
            raise UserError(
                f"the memory backend would hold the {n} {cfg.split} photos of {cfg.data.root} decoded whole with the "
                f"shorter side at most {cfg.policy.base} px, {format_bytes(self.nbytes)} on {cfg.device}, over its limit "
                f"of {format_bytes(limit)} ({why}); use another backend (--backend torch, dali or ffcv) or a smaller "
                f"--res, or raise the limit with --memory-limit {-(-self.nbytes // (1 << 30)) + 1}G (or {ENV_LIMIT}) if it fits")
        self.held.decode(cfg.workers, lambda i, reason: failure(reader, cfg.split, i, reason))
        self.decode_s = time.perf_counter() - t0
        size = "at their stored size" if self.held.short is None else f"with the shorter side <= {cfg.policy.base}"
        log(f"memory backend: {n} {cfg.split} photos decoded whole {size} into {format_bytes(self.nbytes)} on "
            f"{cfg.device} in {self.decode_s:.2f} s ({cfg.workers} workers)")

    @property
    def hold(self) -> str:
        """The tier the split is held in: ``base squares`` (pad-and-crop, one tier), photos ``whole`` at their
        stored size, or ``capped`` with the shorter side at most the policy's base (when whole exceeds the
        memory limit): capped photos give other pixels."""
        if self.held is None:
            return "base squares"
        return "whole" if self.held.short is None else f"capped (shorter side <= {self.held.short} px)"

    @property
    def decode_path(self) -> str:
        if self.held is None:
            return "PIL base squares on cpu"
        cut = "uint8 resize on cpu" if self.cfg.device.type == "cpu" else f"roi_align on {self.cfg.device.type}"
        return f"PIL-decoded held photos + {cut}"

    def cuts_pad_crop(self, pad: int) -> bool:
        """Yes, for pads up to the held split's zero padding (:meth:`crop`, a single gather)."""
        return 0 < pad <= self.pad

    def crop(self, index: torch.Tensor, offset: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S): the images ``index`` (on the device) cropped at integer ``offset`` (B, 2)
        ``(dx, dy)`` in [-pad, pad] (the pad-and-crop box's corner, zero fill outside the image) and
        mirrored where ``flip``: exactly :func:`view_policy.pad_crop_flip`, as one gather from the held split."""
        if self._windows is None:
            raise RuntimeError("MemoryBackend.crop needs BackendConfig.pad > 0")
        dev, p = self.cfg.device, self.pad
        off = offset.to(dev, non_blocking=True) + p
        dx, dy, flip = off[:, 0], off[:, 1], flip.to(dev, non_blocking=True)
        if self._mirror_windows is not None:  # a crop at dx of the mirrored image = the mirrored crop at 2p - dx
            return self._mirror_windows[flip.long(), index, :, dy, torch.where(flip, 2 * p - dx, dx)]
        out = self._windows[index, :, dy, dx]
        out[flip] = out[flip].flip(3)
        return out

    def index_batches(self, epoch: int) -> Iterator[IndexBatch]:
        """``(labels, index on the device, index as a host array)`` of each batch of the epoch, no pixels:
        the Loader cuts the views with :meth:`crop`. The host copy avoids a device sync per batch."""
        order = self.cfg.order(epoch)
        bs = self.cfg.batch_size
        stop = len(order) - len(order) % bs if self.cfg.drop_last else len(order)
        host = np.ascontiguousarray(order[:stop], dtype=np.int64)
        index = torch.from_numpy(host).to(self.cfg.device)  # crosses to the device once per epoch
        for i in range(0, stop, bs):
            idx = index[i : i + bs]
            yield torch.index_select(self.labels, 0, idx), idx, host[i : i + bs]

    @staticmethod
    def _decode(reader, out: torch.Tensor, workers: int, split: str) -> None:
        """Fills ``out`` (N, S, S, 3) with every sample's base image, ``workers`` processes in parallel; a
        sample that does not decode stops it with a UserError naming the sample."""
        from .decode import failure
        from .torch_backend import Samples

        def collate(items):  # Samples items: (image or None, label, index, decode error or None)
            bad = next(((it[2], it[3]) for it in items if it[3] is not None), None)
            return (None if bad else np.stack([it[0] for it in items])), items[0][2], bad

        side = out.shape[1]
        loader = torch.utils.data.DataLoader(Samples(reader, side), batch_size=DECODE_CHUNK, shuffle=False,
                                             num_workers=workers, collate_fn=collate,
                                             generator=torch.Generator())  # no draw from the global RNG
        done, cuda = 0, out.device.type == "cuda"
        for images, start, bad in worker_batches(loader):  # in order: chunk k holds samples [k * CHUNK, (k + 1) * CHUNK)
            if bad is not None:
                raise failure(reader, split, *bad)
            assert start == done, (start, done)
            chunk = torch.from_numpy(images)
            if cuda:  # through pinned host memory, overlapping the copy with the next chunk's decode
                chunk = chunk.pin_memory()
            out[start : start + len(images)].copy_(chunk, non_blocking=cuda)
            done += len(images)
        assert done == len(out), (done, len(out))

    def __len__(self) -> int:
        return num_batches(len(self.cfg.order(0)), self.cfg.batch_size, self.cfg.drop_last)

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        from .decode import view_boxes

        for labels, idx, host in self.index_batches(epoch):
            if self.held is not None:  # RRC/centre views cut from the held photos
                yield self.held.views(host, view_boxes(self.cfg, epoch, host, self.held.reader.table), self.cfg.policy.out), labels, idx
            else:
                yield torch.index_select(self.images, 0, idx), labels, idx
