"""``fastkd compare`` goes on past a cell whose loss becomes non-finite: the cell is recorded as diverged (where,
and why), shown as such in the table and left out of its method's mean; a second run reads the record."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fastkd.experiments import runs
from fastkd.experiments.compare import run_compare
from fastkd.train.config import TrainConfig


@pytest.fixture
def one_thread():
    """Two tiny runs: one thread is as fast on the shared 2-core machine; the count is restored for later tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_diverged_cell_is_recorded_and_the_comparison_goes_on(orl_data, teacher_weights, tmp_path, monkeypatch,
                                                                 one_thread):
    out = tmp_path / "cmp"
    # kd's term x 1e30: finite in the first step, its gradient makes the weights infinite, the next loss is nan
    base = TrainConfig(data=orl_data, out="", student="shufflenet_v2_x0_5", teacher="resnet32", teacher_weights=teacher_weights, epochs=1, batch_size=64, lr=0.05,
                       res=32, workers=0, device="cpu", progress=False, method_options={"kd": {"weight": 1e30}})
    result = run_compare(base, ["ce", "kd"], [0], str(out))
    record = json.load(open(out / "kd" / "seed0" / runs.DIVERGED))
    assert record["top1"] is None and record["diverged"]["epoch"] == 1 and record["diverged"]["batch"] >= 1
    assert "non-finite" in record["diverged"]["message"]
    assert result["cells"]["kd/seed0"] == record
    assert result["cells"]["ce/seed0"]["top1"] >= 0 and os.path.isfile(out / "ce" / "seed0" / "summary.json")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in result["table"].splitlines()[2:]}
    assert rows["kd"][0] == "" and rows["kd"][2] == "0" and rows["kd"][3] == "diverged (epoch 1)"
    assert float(rows["ce"][0]) == result["cells"]["ce/seed0"]["top1"] and rows["ce"][2] == "1"

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded cell was trained again")

    monkeypatch.setattr(runs, "train", no_training)
    again = run_compare(base, ["ce", "kd"], [0], str(out))
    assert again["table"] == result["table"]
