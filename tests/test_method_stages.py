"""The trainer's side of methods with stages or their own views of the batch: a stage that
trains adapters only leaves the student as it was, a run resumed mid-stage ends where the uninterrupted one does,
an expanding method's copies never reach CE or the metrics, and a method the teacher cache cannot serve (one whose
teacher sees copies of the batch the method makes) runs its teacher online with one line saying so (``fastkd cache build`` refuses it in one line)."""
from __future__ import annotations

import pytest
import torch

from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import Trainer, train
from run_tools import fastkd_cli as _fastkd

# 16 px: what these tests assert (which weights move in which stage, exact resumption, rows per step, the refusals)
# does not depend on the pixel count; a quarter of the pixels of 32
FAST = dict(student="shufflenet_v2_x0_5", batch_size=64, lr=0.05, res=16, workers=0, progress=False, device="cpu",
            teacher="resnet32")


def _cfg(data, out, teacher, **kw):
    return TrainConfig(data=data, out=str(out), teacher_weights=teacher, **{**FAST, **kw})


def _clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def teacher(orl_data, tmp_path_factory):
    """resnet32 weights for the 40 ORL classes (random: the stages' mechanics need no trained teacher)."""
    from fastkd.models import create_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "resnet32.pt"
    torch.save(create_model("resnet32", 40, True).state_dict(), path)
    return str(path)


def test_a_stage_training_adapters_only_leaves_the_student_as_it_was(orl_data, teacher, tmp_path):
    """FT's paraphraser epoch and SSKD's teacher-side head epoch (both exclusive, neither trains the student):
    after epoch 1 the student's weights and BN statistics are its initial ones and those two modules moved; the
    SSKD copies (rotations) ran through the teacher; epoch 2 trains the student."""
    cfg = _cfg(orl_data, tmp_path / "run", teacher, method="ft+sskd", epochs=2,
               method_options={"ft": {"paraphraser_epochs": 1}, "sskd": {"ss_epochs": 1}})
    trainer = Trainer(cfg)
    ft, sskd = trainer.methods
    initial = _clone(trainer.student.state_dict())
    methods_initial = [_clone(m.state_dict()) for m in trainer.methods]
    after = []
    real_epoch = trainer._train_epoch

    def epoch_then_snapshot(epoch):
        row = real_epoch(epoch)
        after.append((_clone(trainer.student.state_dict()), [_clone(m.state_dict()) for m in trainer.methods]))
        return row

    trainer._train_epoch = epoch_then_snapshot
    try:
        trainer.fit()
    finally:
        trainer.close()
    (student1, methods1), (student2, _) = after
    assert _same(student1, initial)  # weights and BN running statistics untouched in the adapters' stage
    assert not _same(student2, initial)
    for before, now in zip(methods_initial, methods1):
        moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], now[k])]
        assert moved, "a stage-1 module did not train"
    assert trainer.teacher_source.mode == "online"


def test_a_run_resumed_mid_stage_ends_as_the_uninterrupted_one(orl_data, teacher, tmp_path, monkeypatch):
    """Killed after epoch 1 of FT's 2 paraphraser epochs, the resumed run (stage state, optimiser, RNG from the
    checkpoint) ends with the uninterrupted run's student and method state."""
    options = {"ft": {"paraphraser_epochs": 2}}
    whole = tmp_path / "whole"
    train(_cfg(orl_data, whole, teacher, method="ft", epochs=3, method_options=options))
    real_save = checkpoint.save_atomic

    def save_then_stop(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_stop)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(orl_data, part, teacher, method="ft", epochs=3, method_options=options))
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert checkpoint.load(part / "checkpoint.pt")["epoch"] == 0  # stopped within the paraphraser stage
    train(_cfg(orl_data, part, teacher, method="ft", epochs=3, method_options=options), resume=True)
    a, b = checkpoint.load(whole / "checkpoint.pt"), checkpoint.load(part / "checkpoint.pt")
    assert _same(a["model"], b["model"])
    assert all(_same(x, y) for x, y in zip(a["methods"], b["methods"]))


def test_expanded_copies_never_reach_ce_or_the_metrics(orl_data, teacher, tmp_path):
    """MLKD's strong views double the rows the networks see and MLKD gets them all; the metrics (and CE) get
    the batch's rows, with its labels."""
    trainer = Trainer(_cfg(orl_data, tmp_path / "mlkd", teacher, method="mlkd", epochs=1))
    (mlkd,) = trainer.methods
    method_rows, metric_rows = [], []
    mlkd.register_forward_pre_hook(lambda module, args: method_rows.append((args[0]["logits"].shape[0],
                                                                             args[1]["logits"].shape[0])))
    real_add = trainer.meters.add

    def add(terms, logits, labels):
        metric_rows.append((logits.shape[0], labels.shape[0]))
        return real_add(terms, logits, labels)

    trainer.meters.add = add
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert metric_rows == [(64, 64)] * 5  # ORL: 320 training images, batch 64
    assert method_rows == [(128, 128)] * 5  # student and teacher on the batch and its strong views


def test_methods_the_cache_cannot_serve_run_the_teacher_online(orl_data, teacher, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, err = _fastkd("train", "--data", orl_data, "--out", str(tmp_path / "mlkd"), "--model", "shufflenet_v2_x0_5",
                        "--teacher", "resnet32", "--teacher-weights", teacher, "--method", "mlkd", "--teacher-cache",
                        str(cache), "--epochs", "1", "--res", "16", "--batch-size", "64", "--workers", "0", "--device",
                        "cpu", "--quiet")
    assert code == 0, err
    assert "--teacher-cache" in err and "method mlkd runs the teacher on copies of the batch" in err and "online" in err
    assert not cache.exists()  # nothing written there
    code, err = _fastkd("cache", "build", "--data", orl_data, "--out", str(tmp_path / "c2"), "--teacher", "resnet32",
                        "--teacher-weights", teacher, "--method", "sskd", "--epochs", "1", "--res", "16", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "sskd cannot be served by a teacher cache" in lines[0], err
    assert not (tmp_path / "c2").exists()


def test_two_methods_that_expand_the_batch_are_refused_in_one_line(orl_data, teacher, tmp_path):
    code, err = _fastkd("train", "--data", orl_data, "--out", str(tmp_path / "two"), "--model", "shufflenet_v2_x0_5",
                        "--teacher", "resnet32", "--teacher-weights", teacher, "--method", "sskd+mlkd", "--epochs", "1",
                        "--res", "16", "--workers", "0", "--device", "cpu", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "combine at most one of them" in lines[0], err
