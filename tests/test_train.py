"""Trainer: same seed same result, exact resume, frozen teacher, schedules, weights loading."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fastkd.errors import UserError
from fastkd.models import create_model
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.schedule import lr_at
from fastkd.train.trainer import Trainer, train
from fastkd.train.weights import build_teacher

FAST = dict(student="shufflenet_v2_x0_5", epochs=2, batch_size=64, lr=0.05, res=32, workers=0, progress=False,
            device="cpu")


def _cfg(data, out, **kw):
    return TrainConfig(data=data, out=str(out), **{**FAST, **kw})


def _weights(path):
    return checkpoint.load(os.path.join(path, "checkpoint.pt"))["model"]


@pytest.fixture(scope="module")
def straight_run(orl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    summary = train(_cfg(orl_data, out))
    return out, summary


def test_run_writes_metrics_summary_and_checkpoint(straight_run):
    out, summary = straight_run
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_ce", "test_top1", "test_top5", "lr"} <= set(rows[-1])
    assert json.load(open(out / "summary.json"))["top1"] == summary["top1"] == rows[-1]["test_top1"]
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["model_name"] == "shufflenet_v2_x0_5" and state["low_res"]


def test_epoch_time_is_the_epochs_own(orl_data, tmp_path):
    """An epoch's train_seconds (and so its images/s) counts that epoch alone: the meters of the next
    epoch start at zero seconds (a bug carried every finished epoch's time into the next)."""
    from fastkd.train.trainer import Trainer

    trainer = Trainer(_cfg(orl_data, tmp_path / "run"))
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert trainer.meters.seconds == 0.0 and trainer.meters.seen == 0
    total = sum(r["train_seconds"] for r in trainer.history)
    assert total <= json.load(open(tmp_path / "run" / "summary.json"))["wall_seconds"]


def test_same_seed_same_weights_and_other_seed_differs(orl_data, straight_run, tmp_path):
    out, summary = straight_run
    train(_cfg(orl_data, tmp_path / "again"))
    a, b = _weights(out), _weights(tmp_path / "again")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(_cfg(orl_data, tmp_path / "seed1", seed=1))
    c = _weights(tmp_path / "seed1")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly(orl_data, straight_run, tmp_path, monkeypatch):
    out, _ = straight_run
    real_save, calls = checkpoint.save_atomic, []

    def save_then_die(path, state):
        real_save(path, state)
        calls.append(path)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(orl_data, tmp_path / "r"))
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert checkpoint.load(tmp_path / "r" / "checkpoint.pt")["epoch"] == 0
    with pytest.raises(UserError, match="--resume"):
        train(_cfg(orl_data, tmp_path / "r"))
    with pytest.raises(UserError, match="lr"):
        train(_cfg(orl_data, tmp_path / "r", lr=0.01), resume=True)
    train(_cfg(orl_data, tmp_path / "r"), resume=True)
    a, b = _weights(out), _weights(tmp_path / "r")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_kd_trains_student_and_leaves_teacher_frozen(orl_data, straight_run, tmp_path):
    out, _ = straight_run
    teacher_ckpt = str(out / "checkpoint.pt")
    before = _weights(out)
    trainer = Trainer(_cfg(orl_data, tmp_path / "kd", student="resnet32", method="kd", epochs=1,
                           teacher_weights=teacher_ckpt))
    assert trainer.ce_weight == pytest.approx(0.1)
    assert not trainer.teacher.training
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    summary = trainer.fit()
    trainer.close()
    assert summary["teacher"] == "shufflenet_v2_x0_5" and summary["method"] == "kd"
    after = trainer.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    rows = [json.loads(line) for line in open(tmp_path / "kd" / "metrics.jsonl")]
    assert rows[0]["train_kd"] > 0 and rows[0]["train_ce"] > 0


def test_teacher_errors(orl_data, straight_run, tmp_path):
    out, _ = straight_run
    with pytest.raises(UserError, match="holds a shufflenet_v2_x0_5"):
        build_teacher("ResNet18", str(out / "checkpoint.pt"), 40, True)
    with pytest.raises(UserError, match="uses no teacher"):
        Trainer(_cfg(orl_data, tmp_path / "x", teacher="resnet32"))


def test_torchvision_state_dict_teacher(tmp_path):
    ref = create_model("ResNet18", 10, False)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    teacher = build_teacher("resnet18", str(tmp_path / "r18.pth"), 10, False)
    assert torch.equal(teacher.fc.weight, ref.fc.weight) and not teacher.training
    with pytest.raises(UserError, match="does not fit the teacher"):
        build_teacher("ResNet34", str(tmp_path / "r18.pth"), 10, False)
    with pytest.raises(UserError, match="does not say which architecture"):
        build_teacher(None, str(tmp_path / "r18.pth"), 10, False)


@pytest.mark.parametrize("schedule,epoch,expected", [
    ("cosine", 0.0, 0.1), ("cosine", 5.0, 0.05), ("cosine", 10.0, 0.0),
    ("step", 2.9, 0.1), ("step", 3.0, 0.01), ("step", 6.5, 0.001),
    ("multistep", 3.9, 0.1), ("multistep", 4.0, 0.01), ("multistep", 8.0, 0.001), ("constant", 9.0, 0.1),
])
def test_schedules(schedule, epoch, expected):
    cfg = TrainConfig(data="", out="", student="x", lr=0.1, epochs=10, schedule=schedule, step_size=3,
                      milestones=[4, 8])
    assert lr_at(cfg, epoch) == pytest.approx(expected, abs=1e-12)


def test_warmup_is_linear_then_cosine_from_peak():
    cfg = TrainConfig(data="", out="", student="x", lr=0.2, epochs=12, warmup_epochs=2)
    assert lr_at(cfg, 0.5) == pytest.approx(0.05)
    assert lr_at(cfg, 2.0) == pytest.approx(0.2)
    assert lr_at(cfg, 7.0) == pytest.approx(0.1)


def test_torchrun_two_processes_on_cpu(orl_data, tmp_path):
    """DistributedDataParallel under torchrun (gloo on CPU): one report, one checkpoint, full eval."""
    from torchrun_tools import torchrun

    out = tmp_path / "ddp"
    result = torchrun(2, "-m", "fastkd", "train", "--data", orl_data, "--out", str(out), "--model", "shufflenet_v2_x0_5",
                      "--epochs", "1", "--batch-size", "32", "--res", "32", "--workers", "0", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('"student"') == 1  # only rank 0 reports
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[0]["test_count"] == 80  # the two ranks' halves of the test split, summed
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 0


def test_method_needing_a_missing_tap_fails_before_training(orl_data, straight_run, tmp_path):
    out, _ = straight_run  # a shufflenet_v2_x0_5 teacher (stage1..stage4)
    with pytest.raises(UserError, match=r"needs feature tap 'stage4', which the student resnet32 lacks"):
        Trainer(_cfg(orl_data, tmp_path / "at", student="resnet32", method="at",
                     method_options={"at": {"stages": "stage3,stage4"}}, teacher_weights=str(out / "checkpoint.pt")))
    assert not (tmp_path / "at").exists()


def test_compare_table_resumes_cell_by_cell(orl_data, straight_run, tmp_path, monkeypatch):
    import fastkd.experiments.compare as compare

    out, _ = straight_run
    base = _cfg(orl_data, "", epochs=1, teacher_weights=str(out / "checkpoint.pt"))
    first = compare.run_compare(base, ["ce", "kd"], [0, 1], str(tmp_path / "cmp"))
    cells = first["cells"]
    assert set(cells) == {"ce/seed0", "ce/seed1", "kd/seed0", "kd/seed1"}
    assert cells["ce/seed0"]["teacher"] is None and cells["kd/seed1"]["method"] == "kd"
    assert any(line.startswith("| kd ") for line in first["table"].splitlines())
    monkeypatch.setattr("fastkd.experiments.runs.train", lambda cfg: pytest.fail("a finished cell was trained again"))
    again = compare.run_compare(base, ["ce", "kd"], [0, 1], str(tmp_path / "cmp"))
    assert again["table"] == first["table"]
