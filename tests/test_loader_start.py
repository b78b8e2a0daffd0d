"""Loader.epoch(e, start): exactly the tail of epoch e, without reading the skipped batches."""
from __future__ import annotations

import pytest
import torch

from fastkd.pipelines import torch_backend
from fastkd.pipelines.augment import AugmentConfig


@pytest.mark.parametrize("backend", ["torch", "memory"])
def test_epoch_from_a_batch_is_the_tail_of_the_epoch(orl_data, make_loader, monkeypatch, backend):
    loader = make_loader(orl_data, "train", backend=backend, batch_size=32, res=32, seed=5, workers=0,
                         augment=AugmentConfig(erasing_p=0.5, mixup_alpha=1.0))
    full = list(loader.epoch(2))
    decoded = []
    real = torch_backend.base_image
    monkeypatch.setattr(torch_backend, "base_image", lambda *a: decoded.append(1) or real(*a))
    tail = list(loader.epoch(2, 7))
    assert len(full) == 10 and len(tail) == 3
    for a, b in zip(full[7:], tail, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert len(decoded) == (3 * 32 if backend == "torch" else 0)  # the memory backend decoded at construction
    assert [len(b.labels) for b in loader.epoch(2, 10)] == []
    with pytest.raises(ValueError):
        next(loader.epoch(2, 11))
