"""Where a step's teacher signals come from: the network (online), a teacher cache (cached), or the network
with its outputs written to the cache (filling): the fused loop of ``fastkd train --teacher-cache DIR``.

With a cache the teacher is first built on the meta device (architecture, taps and signal shapes, no
weights in memory); its weights are loaded onto the training device only when some needed signal is not
in the cache for every epoch of the run. Per batch, when the cache holds every cached signal of the batch's
(epoch, indices) they are read; otherwise the teacher runs and the rows the cache lacks are written. The
teacher always runs in eval mode under ``torch.inference_mode``, inside the step's autocast.

Every batch's views are fingerprinted (``fastkd.cache.fingerprint``): written beside the rows, compared on
every read (a cached output is never served for other pixels). A row failing its CRC-32 is recomputed by
the teacher and rewritten, with one line saying so. The weights file is read once: the cache key hashes
exactly the bytes the teacher is loaded from.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from fastkd.cache import TeacherCache, cache_key
from fastkd.cache.fingerprint import view_fingerprint
from fastkd.cache.store import DamagedRows, row_bytes, stored_spec
from fastkd.errors import UserError
from fastkd.log import log
from fastkd.sizes import format_bytes

from . import distributed
from .signals import SignalModel
from .weights import build_teacher, load_weights, read_weights_file


def teacher_network(cfg, num_classes: int, low_res: bool, device: torch.device, res: Optional[int] = None) -> nn.Module:
    """The frozen teacher on ``device``; with ``cfg.teacher_cache`` on the meta device (weights file and
    architecture checked, nothing loaded) until :class:`TeacherSource` decides it must run. The global RNG
    is left as it was (the random init is overwritten by the weights), so adapters built next are the same
    whether the teacher is online, cached or filling."""
    with torch.random.fork_rng(devices=[]):
        if not cfg.teacher_cache:
            return build_teacher(cfg.teacher, cfg.teacher_weights, num_classes, low_res, res=res).to(device)
        # read once: the key's hash and the weights loaded later come from the same bytes, whatever
        # happens to the file in between
        data = read_weights_file(cfg.teacher_weights) if cfg.teacher_weights else None
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": intended
            model = build_teacher(cfg.teacher, cfg.teacher_weights, num_classes, low_res, data=data, res=res)
        model.fastkd_weights = data
        model.fastkd_weights_sha256 = hashlib.sha256(data).hexdigest()
        return model


def checkpoint_reserve(cfg, num_classes: int, low_res: bool, res: Optional[int] = None) -> int:
    """Bytes the run's checkpoints take at most: the student's parameters and buffers, plus the SGD momentum
    (one buffer per parameter), times 2 files (``checkpoint.pt`` and the temporary copy written over it), plus
    ``model.safetensors`` (parameters and buffers) and its temporary copy.
    The student is built on the meta device: nothing allocated, no random numbers drawn. 0 for a run that
    writes no checkpoint (``fastkd cache build``)."""
    from fastkd.models import create_model

    if not cfg.out or not cfg.student:
        return 0
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            student = create_model(cfg.student, num_classes, low_res, res=res)
        except (UserError, NotImplementedError):  # an initialiser that needs real numbers (torchvision RegNets)
            return 0
    params = sum(p.numel() * p.element_size() for p in student.parameters())
    buffers = sum(b.numel() * b.element_size() for b in student.buffers())
    return 2 * (params * (2 if cfg.momentum else 1) + buffers) + 2 * (params + buffers)  # + model.safetensors


def _same_file_system(a: str, b: str) -> bool:
    from fastkd.cache.store import existing_parent

    try:
        return os.stat(existing_parent(a)).st_dev == os.stat(existing_parent(b)).st_dev
    except OSError:
        return True


def plan_signals(shapes: Dict[str, tuple], storage: dict, budget: float, views: int) -> List[str]:
    """The signals to cache: logits and pooled (1-d) signals always; maps (>= 2-d per view) smallest first
    while their bytes over all ``views`` stay within ``budget``."""
    chosen = [n for n, s in shapes.items() if len(s) <= 1]
    used = 0
    for name in sorted((n for n, s in shapes.items() if len(s) > 1), key=lambda n: math.prod(shapes[n])):
        size = row_bytes(stored_spec(name, {"shape": shapes[name]}, storage)) * views
        if used + size <= budget:
            chosen.append(name)
            used += size
    return sorted(chosen)


def _visited(loader, epoch: int):
    """The cache rows this rank trains on in ``epoch`` (a dropped last partial batch excluded): dataset indices,
    or ``index * K + k`` with ``--views-per-image K``."""
    order = loader.order(epoch)
    order = order[: len(loader) * loader.batch_size] if loader.drop_last else order
    k = loader.views_per_image
    return order if k == 1 else order * k + np.arange(len(order)) % k


class TeacherSource:
    """``source(images, batch)`` -> the teacher's signals for the batch (called inside the step's autocast)."""

    def __init__(self, signals: SignalModel, cfg, loader, dist: distributed.Dist, device: torch.device):
        self.signals, self.cfg, self.device = signals, cfg, device
        self.module: nn.Module = signals.model
        self.cache, self.cached, self.online = None, [], []
        if cfg.teacher_cache:
            self._open_cache(loader, dist)

    @property
    def mode(self) -> str:
        if self.cache is None:
            return "online"
        return "cached" if self._on_meta() else "filling"

    def _on_meta(self) -> bool:
        return next(self.module.parameters()).device.type == "meta"

    def _open_cache(self, loader, dist) -> None:
        cfg = self.cfg
        if dist.world > 1 and loader.count % dist.world and loader.augment is not None and loader.augment.mixing:
            # the ranks' padding repeats indices, and a repeated index gets another mixing partner
            raise UserError(f"--teacher-cache with mixup/cutmix under torchrun needs a training split whose size "
                            f"({loader.count}) is a multiple of the world size ({dist.world}); drop --teacher-cache "
                            "or change the number of processes")
        with torch.no_grad():
            dry = self.signals(torch.zeros(1, 3, loader.res, loader.res, device="meta"))
        shapes = {n: tuple(t.shape[1:]) for n, t in dry.items()}
        storage = {"dtype": cfg.cache_dtype, "topk": int(cfg.cache_topk)}
        if storage["topk"] >= shapes["logits"][0]:
            storage["topk"] = 0  # every class kept: plain logits
        self.cached = plan_signals(shapes, storage, cfg.cache_budget, loader.rows_per_epoch * cfg.epochs)
        self.online = sorted(set(shapes) - set(self.cached))
        if self.online and dist.main:
            log(f"teacher cache: {', '.join(self.online)} run online (their maps exceed --cache-budget "
                 f"{format_bytes(cfg.cache_budget)})")
        key = cache_key(cfg, loader, self.module.fastkd_name, dist.world,
                        getattr(self.module, "fastkd_weights_sha256", None))
        wanted = {n: {"shape": shapes[n]} for n in self.cached}
        opened = None
        if dist.main:
            reserve = 0
            if cfg.out and _same_file_system(cfg.out, cfg.teacher_cache):
                reserve = checkpoint_reserve(cfg, loader.data.num_classes, loader.low_res, loader.res)
            opened = TeacherCache.open(cfg.teacher_cache, key, storage, wanted, cfg.epochs, fill=True, main=True, log=log,
                                       reserve=reserve)
        distributed.barrier()
        self.cache = opened or TeacherCache.open(cfg.teacher_cache, key, storage, wanted, cfg.epochs, fill=True, main=False)
        if self.online or not self.cache.complete(self.cached, cfg.epochs, lambda e: _visited(loader, e)):
            self._materialise()
        if dist.main:
            log(f"teacher cache {self.cache.root}: {self.mode} ({', '.join(self.cached)} cached)")

    def _materialise(self) -> None:
        """Load the teacher's weights onto the device (the hooks of ``signals`` stay on the same modules)."""
        if not self._on_meta():
            return
        self.module.to_empty(device=self.device)
        load_weights(self.module, self.cfg.teacher_weights, "teacher", data=getattr(self.module, "fastkd_weights", None))
        self.module.fastkd_weights = None  # loaded: the bytes are no longer needed
        if self.cfg.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.module.eval()

    def __call__(self, images: torch.Tensor, batch) -> Dict[str, torch.Tensor]:
        idx = fingerprint = damaged = None
        if self.cache is not None:
            idx = batch.rows.numpy()
            fingerprint = view_fingerprint(images).cpu().numpy()  # the views exactly as the teacher sees them
            if not self.online and self.cache.has(batch.epoch, idx, self.cached):
                try:
                    return self.cache.read(batch.epoch, idx, self.cached, images.device, fingerprint=fingerprint)
                except DamagedRows as exc:
                    if not self.cache.writable:
                        raise
                    damaged = exc.positions
                    log(f"teacher cache {self.cache.root}: {exc.what}; recomputed by the teacher and rewritten")
            self._materialise()  # a row the cache lacks (it changed under us) or a damaged one: run the teacher
        with torch.inference_mode():
            t = self.signals(images)
        if self.cache is not None:
            self.cache.write(batch.epoch, idx, {n: t[n] for n in self.cached}, fingerprint=fingerprint, rewrite=damaged)
        # outside inference mode, so that losses may save them for backward (FitNets, CRD)
        return {k: v.clone() if v.is_inference() else v for k, v in t.items()}

    def close(self) -> None:
        self.signals.close()
        if self.cache is not None:
            self.cache.close()
