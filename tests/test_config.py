"""TrainConfig refuses bad values at construction, naming the option."""
from __future__ import annotations

import re

import pytest

from fastkd.errors import UserError
from fastkd.train.config import TrainConfig


@pytest.mark.parametrize("bad,message", [
    ({"eval_every": 0}, "--eval-every 0 must be an integer >= 1"),
    ({"epochs": -1}, "--epochs -1 must be an integer >= 1"),
    ({"batch_size": 0}, "--batch-size 0 must be"),
    ({"lr": -0.1}, "--lr -0.1 must be > 0"),
    ({"schedule": "linear"}, "--schedule 'linear' is unknown; choose one of: cosine, step, multistep, constant"),
    ({"schedule": "multistep"}, "--milestones [] is empty"),
    ({"schedule": "multistep", "milestones": [20, 10]}, "in increasing order"),
    ({"milestones": [5, 40]}, "must be epochs in 0..30"),
    ({"amp": "fp8"}, "--amp 'fp8' is unknown"),
    ({"warmup_epochs": 31}, "must not exceed --epochs 30"),
    ({"checkpoint_every": -1}, "--checkpoint-every -1 must be >= 0"),
    ({"dropout": 1.0}, "--dropout 1.0 must be in [0, 1)"),
])
def test_bad_values_fail_at_construction(bad, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TrainConfig(data="", out="", student="resnet32", **bad)


def test_good_values_pass():
    cfg = TrainConfig(data="", out="", student="resnet32", schedule="multistep", milestones=[10, 20], warmup_epochs=30,
                      checkpoint_every=0)
    assert cfg.eval_every == 1 and cfg.views
