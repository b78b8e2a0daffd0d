"""Every method under torchrun (2 CPU ranks, gloo): the per-sample ones train what one process with the global
batch trains (their adapters' BatchNorms synchronised by ``--sync-bn`` too), through a stage that trains an
adapter alone (FT's paraphraser: the student runs without gradient) and a stage that trains the student; the
others, whose losses relate the samples of a rank's batch (as in their reference code under DDP) or draw
views per rank, run both their stages to the end with finite losses, rank 0 alone reporting.

Tolerances as tests/test_ddp_equality.py explains (float32 reduction order, a random teacher's large
signals): the losses within 1e-2 relative, weights and buffers within 0.1 of each tensor's largest value.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from fastkd.methods import list_methods
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

from fastkd.models import create_model
from test_ddp_equality import ARGS, _cli_args, _metrics
from torchrun_tools import torchrun_each

PER_SAMPLE = "vid+reviewkd+ft"  # FT's paraphraser epoch first, then all three with CE
OPTIONS = {"ft": {"paraphraser_epochs": 1}}
# the rest, in two runs (at most one method per run makes copies of the batch), each first stage one epoch long
RELATIONAL = ["sskd+ab+fsp+kta+dist_plus+skd+srd+cc+sp+kdsvd",
              "mlkd+nst+ickd+ctkd+ls+dist+pad_l2+tfkd+dkd+pkt+rkd+crd+overhaul+fitnets+l2+kd+at"]
STAGES = {"sskd": {"ss_epochs": 1}, "fsp": {"stage1_epochs": 1}}
# 16 px: the methods run the same code at any map size, on a quarter of the pixels (measured: the 2-rank
# per-sample run within 2% of the weight tolerance and 0.3% of the loss tolerance)
RES = 16


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random resnet32 whose BatchNorm statistics are calibrated on random images (train-mode passes): its
    signals are of order 1, as a trained teacher's. An uncalibrated one (running variance 1 everywhere) makes maps
    of order 100 that blow up FSP's and CC's losses (measured: 6e5 and 2e22 within 2 steps at lr 0.002)."""
    torch.manual_seed(1)
    model = create_model("resnet32", 40, True)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # the average over the passes
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, 3, RES, RES))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _cfg(data, teacher, spec: str, options) -> dict:
    return dict(ARGS, data=data, method=spec, method_options=options, teacher="resnet32", teacher_weights=teacher,
                res=RES)


@pytest.fixture(scope="module")
def two_ranks(orl_data, teacher, tmp_path_factory):
    """The 2-rank runs of the per-sample methods and of each RELATIONAL group, one after another in one torchrun
    launch (its start paid once): {spec: (run folder, the command's result)}."""
    root = tmp_path_factory.mktemp("two_ranks")
    specs = {PER_SAMPLE: OPTIONS, **{spec: {m: o for m, o in STAGES.items() if m in spec.split("+")}
                                     for spec in RELATIONAL}}
    runs = {f"run{i}": ["train", *_cli_args(_cfg(orl_data, teacher, spec, options), root / f"run{i}", 32)]
            for i, (spec, options) in enumerate(specs.items())}
    results = torchrun_each(2, runs, root / "logs")
    return {spec: (root / name, results[name]) for spec, name in zip(specs, runs)}


def test_every_method_is_covered_here():
    covered = set(PER_SAMPLE.split("+")).union(*(spec.split("+") for spec in RELATIONAL))
    assert covered == set(list_methods()) - {"ce"}


def test_per_sample_methods_on_two_ranks_train_as_one_process(orl_data, teacher, two_ranks, tmp_path):
    one = tmp_path / "one"
    train(TrainConfig(out=str(one), batch_size=64, **_cfg(orl_data, teacher, PER_SAMPLE, OPTIONS)))
    two, result = two_ranks[PER_SAMPLE]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"student"') == 1  # rank 0 alone reports
    for ra, rb in zip(_metrics(one), _metrics(two)):
        assert abs(ra["train_loss"] - rb["train_loss"]) <= 1e-2 * max(1.0, abs(ra["train_loss"])), (ra, rb)
    sa, sb = checkpoint.load(one / "checkpoint.pt"), checkpoint.load(two / "checkpoint.pt")
    compared = 0
    for x, y in [(sa["model"], sb["model"])] + list(zip(sa["methods"], sb["methods"])):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]) and x[key].is_floating_point():
                scale = max(1.0, float(x[key].abs().max()))
                torch.testing.assert_close(y[key], x[key], rtol=0, atol=0.1 * scale, msg=lambda m: f"{key}: {m}")
                compared += 1
    assert compared > 100


@pytest.mark.parametrize("spec", RELATIONAL, ids=["sskd", "mlkd"])
def test_the_other_methods_run_both_stages_on_two_ranks(two_ranks, spec):
    out, result = two_ranks[spec]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"student"') == 1
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["teacher_source"] == "online"
