"""The composition root (fastkd/train/build.py): one construction of a run's parts for training, cache
filling and evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastkd.errors import UserError
from fastkd.train.build import build_run, evaluate_weights
from fastkd.train.config import TrainConfig


def _cfg(orl_data, tmp_path, **kw):
    base = dict(data=orl_data, out=str(tmp_path / "run"), student="resnet32", res=32, batch_size=48, workers=0,
                device="cpu", progress=False, mixup=0.2, erasing=0.5, seed=3)
    return TrainConfig(**{**base, **kw})


def test_cache_and_training_runs_see_the_same_views(orl_data, tmp_path, teacher_weights):
    cfg = _cfg(orl_data, tmp_path, method="kd", teacher="resnet32", teacher_weights=teacher_weights)
    train, cache = build_run(cfg, "train"), build_run(cfg, "cache")
    try:
        assert train.student is not None and train.optimizer is not None and train.eval_loader is not None
        assert cache.student is None and cache.optimizer is None and cache.eval_loader is None
        assert cache.teacher_source is not None and train.teacher_source is not None
        # the cache keeps the last partial batch (320 = 6 x 48 + 32); training drops it
        assert (len(train.train_loader), len(cache.train_loader)) == (6, 7)
        a, b = next(iter(train.train_loader.epoch(1))), next(iter(cache.train_loader.epoch(1)))
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images)
        assert torch.equal(a.view.mix_partner, b.view.mix_partner) and torch.equal(a.targets, b.targets)
    finally:
        train.close()
        cache.close()


def test_a_method_without_teacher_refuses_teacher_options(orl_data, tmp_path, teacher_weights):
    with pytest.raises(UserError, match="uses no teacher"):
        build_run(_cfg(orl_data, tmp_path, teacher_weights=teacher_weights), "train")


def test_evaluate_weights_matches_the_training_evaluation(orl_data, tmp_path, teacher_weights):
    from fastkd.train.evaluate import evaluate

    cfg = _cfg(orl_data, tmp_path, channels_last=False)
    got = evaluate_weights(cfg, teacher_weights)
    run = build_run(cfg, "train")
    run.student.load_state_dict(torch.load(teacher_weights, weights_only=True))
    want = evaluate(run.student, run.eval_loader)
    run.close()
    assert got["split"] == "test" and got["count"] == 80
    assert got["top1"] == want["top1"] and np.isclose(got["loss"], want["loss"], rtol=1e-6)
