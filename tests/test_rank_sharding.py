"""Rank sharding of every backend: N ranks with batch B see the batches of one process with batch N x B.

No processes are launched: each rank's Loader is built with its ``rank``/``world``. Global batch k of the
one-process run must be the concatenation, in rank order, of the ranks' batches k, down to the pixels of the
views, the mixup/cutmix pairs and soft targets, and the random-erasing boxes (all functions of (seed, epoch,
index) and of the position in the epoch order)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastkd.pipelines.augment import AugmentConfig

from conftest import release_loader

WORLD, B = 2, 8
BACKENDS = ["torch", "memory", "dali", "ffcv"]


def _needs(backend):
    if backend in ("dali", "ffcv"):
        pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend])


def _loaders(data, split, backend, train, **kw):
    from fastkd.pipelines import Loader

    common = dict(backend=backend, res=32, seed=4, workers=0 if backend != "ffcv" else 1, train=train, **kw)
    one = Loader(data, split, batch_size=WORLD * B, **common)
    ranks = [Loader(data, split, batch_size=B, rank=r, world=WORLD, **common) for r in range(WORLD)]
    return one, ranks


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_see_the_global_batches_of_one_process(orl_data, backend):
    _needs(backend)
    augment = AugmentConfig(erasing_p=0.5, mixup_alpha=1.0, cutmix_alpha=1.0)
    one, ranks = _loaders(orl_data, "train", backend, True, augment=augment)
    try:
        epoch = 1
        single = list(one.epoch(epoch))
        per_rank = [list(r.epoch(epoch)) for r in ranks]
        assert [len(p) for p in per_rank] == [len(single)] * WORLD == [len(r) for r in ranks]
        assert len(single) == 320 // (WORLD * B)
        mixed = 0
        for k, batch in enumerate(single):
            parts = [p[k] for p in per_rank]
            for field in ("index", "labels", "images", "targets"):
                torch.testing.assert_close(torch.cat([getattr(p, field) for p in parts]), getattr(batch, field),
                                           rtol=0, atol=0, msg=f"{backend} batch {k} {field}")
            for key, value in batch.view.entries().items():
                assert torch.equal(torch.cat([getattr(p.view, key) for p in parts]), value), (backend, k, key)
            mixed += int((batch.view.mix_kind > 0).sum())
        assert mixed > 0  # the pairs were really mixed, on both sides of the comparison
    finally:
        for loader in (one, *ranks):
            release_loader(loader)


@pytest.mark.parametrize("backend", ["torch", "memory"])
def test_evaluation_visits_every_sample_once_over_the_ranks(orl_data, backend):
    one, ranks = _loaders(orl_data, "test", backend, False)
    try:
        index = [torch.cat([b.index for b in r.epoch(0)]).numpy() for r in ranks]
        # 80 test samples = 5 global batches of 16: each rank holds its blocks of 8, nothing repeated
        np.testing.assert_array_equal(np.sort(np.concatenate(index)), np.arange(80))
        single = torch.cat([b.images for b in one.epoch(0)])
        blocks = [torch.cat([b.images for b in r.epoch(0)]).split(B) for r in ranks]
        merged = torch.cat([blk[k] for k in range(len(blocks[0])) for blk in blocks if k < len(blk)])
        assert torch.equal(merged, single)
    finally:
        for loader in (one, *ranks):
            release_loader(loader)
