"""One pass over the data trains a row of cells (fastkd/train/one_pass.py): every cell ends with the weights, method
state and metrics it has when trained alone (kd, at, rkd, crd reading one filled teacher cache), with one loader pass
per epoch for the whole row; a row killed with SIGKILL at random moments (checkpoint writes included) resumes every
cell exactly; a row that would not fit in memory trains its cells one after another, saying why."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest
import torch

from fastkd.experiments.runs import run_cells
from fastkd.pipelines import Loader
from fastkd.train import checkpoint, one_pass
from fastkd.train.cache_fill import build_cache
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

METHODS = ["kd", "at", "rkd", "crd"]
TIMING = ("train_seconds", "train_images_per_s")
# 320 ORL training images / 64 = 5 steps per epoch; 16 px: what is asserted does not depend on the pixel count.
# Dropout before the classifier draws from the global RNG in every step: each cell must draw its own stream.
BASE = dict(student="shufflenet_v2_x0_5", teacher="resnet32", epochs=2, batch_size=64, lr=0.05, res=16, workers=0,
            device="cpu", progress=False, backend="memory", dropout=0.2)


def _cfgs(data, teacher, cache, root, methods=METHODS, **kw):
    return [TrainConfig(data=data, out=str(root / m), method=m, teacher_weights=teacher, teacher_cache=cache,
                        **{**BASE, **kw}) for m in methods]


def _result(out):
    """Final student weights, the methods' state (CRD's memory bank and embeddings) and the metrics rows less
    their timings."""
    state = checkpoint.load(os.path.join(out, "checkpoint.pt"))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return state["model"], state["methods"], [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _assert_same(a, b, what):
    (wa, ma, ra), (wb, mb, rb) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{what}: other student weights"
    torch.testing.assert_close(ma, mb, rtol=0, atol=0, msg=lambda m: f"{what}: other method state: {m}")
    assert ra == rb, what


@pytest.fixture(scope="module")
def alone(orl_data, teacher_weights, tmp_path_factory):
    """The teacher cache filled for the four methods at once (as the grid fills it), then each cell trained alone
    reading it: {method: result}."""
    root = tmp_path_factory.mktemp("one_pass")
    cache = str(root / "cache")
    cfgs = _cfgs(orl_data, teacher_weights, cache, root / "alone")
    build_cache(replace(cfgs[0], method="+".join(METHODS)), batch_size=BASE["batch_size"], progress=False)
    results = {}
    for cfg in cfgs:
        summary = train(cfg)
        assert summary["teacher_source"] == "cached"
        results[cfg.method] = _result(cfg.out)
    return cache, results


def test_a_row_trains_each_cell_as_alone_in_one_pass(orl_data, teacher_weights, alone, tmp_path, monkeypatch,
                                                     capsys):
    cache, results = alone
    passes, evaluations = [], []
    real_epoch = Loader.epoch

    def counted(self, epoch, *args, **kwargs):
        (passes if self.train else evaluations).append(epoch)
        return real_epoch(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Loader, "epoch", counted)
    summaries = run_cells(_cfgs(orl_data, teacher_weights, cache, tmp_path), METHODS, "test")
    assert passes == [0, 1]  # one pass per epoch for the four cells
    assert len(evaluations) == 2  # and one pass of the test split per epoch (--eval-every 1) for all four
    assert "one pass over the data for 4 cells" in capsys.readouterr().err
    for method, summary in zip(METHODS, summaries):
        assert summary["method"] == method and summary["teacher_source"] == "cached"
        _assert_same(_result(str(tmp_path / method)), results[method], method)
    # a finished row is read back, not trained again
    passes.clear()
    assert run_cells(_cfgs(orl_data, teacher_weights, cache, tmp_path), METHODS, "test") == summaries
    assert passes == []


def test_a_row_that_does_not_fit_trains_its_cells_one_after_another(orl_data, teacher_weights, alone, tmp_path,
                                                                    monkeypatch, capsys):
    cache, results = alone
    monkeypatch.setattr(one_pass, "free_memory", lambda device: 1000)
    methods = ["kd", "at"]
    run_cells(_cfgs(orl_data, teacher_weights, cache, tmp_path, methods), methods, "test")
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "[one-pass] not used" in x)
    assert "2 cells would hold about" in line and "one after another" in line
    assert "one pass over the data" not in err
    for method in methods:
        _assert_same(_result(str(tmp_path / method)), results[method], method)


DRIVER = """
import json, sys
from fastkd.experiments.runs import run_cells
from fastkd.train.config import TrainConfig
cfgs = [TrainConfig(**c) for c in json.load(open(sys.argv[1]))]
run_cells(cfgs, [c.method for c in cfgs], "test")
"""


def test_a_row_killed_at_random_moments_resumes_every_cell_exactly(orl_data, teacher_weights, alone, tmp_path):
    """A checkpoint of every cell after every step, so kills land between the cells' writes (the cells then stand at
    different steps) and inside them; each start runs the same command."""
    cache, results = alone
    cfgs = _cfgs(orl_data, teacher_weights, cache, tmp_path / "row", checkpoint_every=1e-9)
    spec = tmp_path / "cells.json"
    spec.write_text(json.dumps([asdict(c) for c in cfgs]))
    cmd = [sys.executable, "-c", DRIVER, str(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the alone runs' thread count
    rng, killed = random.Random(0), 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        while proc.poll() is None and not os.path.exists(os.path.join(cfgs[-1].out, "checkpoint.pt")):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate()
    assert killed >= 1
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for cfg in cfgs:
        _assert_same(_result(cfg.out), results[cfg.method], cfg.method)


def test_cells_that_expand_the_batch_or_differ_in_their_batches_do_not_share_a_pass():
    cfg = TrainConfig(data="d", out="o", method="kd", **BASE)
    assert one_pass.can_share(cfg) and not one_pass.can_share(replace(cfg, method="sskd"))
    assert one_pass.row_key(cfg) == one_pass.row_key(replace(cfg, method="at+kd", out="p", method_options={"kd": {}}))
    for other in (dict(seed=1), dict(batch_size=32), dict(res=32), dict(views_per_image=2), dict(epochs=3)):
        assert one_pass.row_key(replace(cfg, **other)) != one_pass.row_key(cfg), other


def test_a_row_under_torchrun_equals_its_cells_one_after_another(orl_data, teacher_weights, tmp_path):
    """`fastkd compare` on 2 ranks: the kd and at cells of a seed in one pass (each cell wrapped in its own DDP, the
    row's flags reduced once per poll) end with the weights of the same cells trained one after another."""
    from torchrun_tools import torchrun_each

    common = ["compare", "--data", orl_data, "--student", "shufflenet_v2_x0_5", "--teacher", "resnet32",
              "--teacher-weights", teacher_weights, "--methods", "kd,at", "--seeds", "0", "--epochs", "2",
              "--batch-size", "32", "--res", "16", "--workers", "0", "--device", "cpu", "--quiet"]
    runs = {"row": [*common, "--out", str(tmp_path / "row")],
            "alone": [*common, "--out", str(tmp_path / "alone"), "--no-one-pass"]}
    results = torchrun_each(2, runs, tmp_path / "logs")
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    assert "one pass over the data for 2 cells" in results["row"].stderr
    assert "one pass over the data" not in results["alone"].stderr
    for method in ("kd", "at"):
        a, b = (checkpoint.load(str(tmp_path / run / method / "seed0" / "checkpoint.pt"))["model"]
                for run in ("row", "alone"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
