"""``fastkd cache build``: fill a teacher cache ahead of training, with no student.

The teacher runs in eval mode without gradients over every view of every epoch, in large batches (the
cache is addressed by (epoch, dataset index), so the batch size need not be the training run's; outputs
agree with a fused-loop fill to float rounding, and bit for bit at the same batch size). The loader is the
training loader of the same options, built by the same composition root (``fastkd.train.build``), so
the views are the ones the student run will see.

Under torchrun the ranks share the fill: the epoch order is dealt to them in blocks of the batch size, as a
training run deals it, so each rank runs the teacher on disjoint rows and writes them into the shared maps
(views and augmentations are functions of (seed, epoch, index, position), so the rows are the ones one
process would write). Rank 0 reports once every rank is done.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch

from fastkd.cache.info import cache_info

from . import distributed, tricks
from .build import build_run


def build_cache(cfg, batch_size: int = 256, progress: bool = True) -> "dict | None":
    """Fill ``cfg.teacher_cache`` for the run ``cfg`` (a ``TrainConfig``; its student is ignored), the teacher
    run in batches of ``batch_size``, and return what :func:`fastkd.cache.info.cache_info` says about it (on
    rank 0; None on the other ranks of a torchrun job, each of which filled its share of every epoch)."""
    from tqdm import tqdm

    run = build_run(replace(cfg, batch_size=batch_size), "cache")
    loader, source, dist, device = run.train_loader, run.teacher_source, run.dist, run.device
    amp = tricks.amp_dtype(cfg.amp)
    try:
        if source.mode != "cached":
            bar = tqdm(total=len(loader) * cfg.epochs, desc="teacher cache", unit="batch", file=sys.stderr,
                       disable=not (progress and dist.main), dynamic_ncols=True)
            for epoch in range(cfg.epochs):
                for batch in loader.epoch(epoch):
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        source(batch.images, batch)
                    bar.update(1)
            bar.close()
            if source.cache is not None:
                source.cache.flush()
        distributed.barrier()  # every rank's rows are on disk before rank 0 reports (and lets go of the fill lock)
    finally:
        run.close()
    return cache_info(cfg.teacher_cache) if dist.main else None
