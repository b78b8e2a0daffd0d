"""Mixed precision (fp16 with loss scaling, bf16) and torch.compile, end to end on the CPU.

fp16 runs through ``torch.amp.GradScaler`` on every device (CPU autocast has fp16 kernels); its scale is
part of the checkpoint, so an fp16 run resumes exactly. ``--compile`` traces the student with its
feature taps (the hooks the feature methods read) and must leave the checkpoint's keys as eager's.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import Trainer, train

FAST = dict(student="shufflenet_v2_x0_5", epochs=2, batch_size=64, lr=0.05, res=32, workers=0, progress=False,
            device="cpu")
# fp16 and bf16 convolutions are slow on a CPU (README: fp16 23 img/s against 512 in float32), and nothing these
# tests assert depends on the pixel count: those runs use 16 px (the same low-resolution models, 2x2 last maps)
LOW = 16


def _cfg(data, out, **kw):
    return TrainConfig(data=data, out=str(out), **{**FAST, **kw})


def _state(path):
    return checkpoint.load(os.path.join(path, "checkpoint.pt"))


def test_fp16_scales_the_loss_and_resumes_exactly(orl_data, tmp_path, monkeypatch):
    straight = train(_cfg(orl_data, tmp_path / "a", amp="fp16", res=LOW))
    assert straight["top1"] is not None
    state = _state(tmp_path / "a")
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0  # the GradScaler ran and was saved
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    train(_cfg(orl_data, tmp_path / "b", amp="off", res=LOW))
    fp32 = _state(tmp_path / "b")
    assert fp32["scaler"] is None
    # fp16 really changed the arithmetic: other weights than the float32 run's
    assert not all(torch.equal(state["model"][k], fp32["model"][k]) for k in fp32["model"])
    # killed after epoch 0, resumed: the very weights and scale of the straight run
    real_save = checkpoint.save_atomic

    def save_then_die(path, st):
        real_save(path, st)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(orl_data, tmp_path / "r", amp="fp16", res=LOW))
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    train(_cfg(orl_data, tmp_path / "r", amp="fp16", res=LOW), resume=True)
    resumed = _state(tmp_path / "r")
    assert resumed["scaler"] == state["scaler"]
    assert all(torch.equal(resumed["model"][k], state["model"][k]) for k in state["model"])


def test_fp16_scaler_skips_steps_with_overflowing_gradients(orl_data, tmp_path, capsys):
    tr = Trainer(_cfg(orl_data, tmp_path / "o", amp="fp16", epochs=1, res=LOW))
    assert isinstance(tr.scaler, torch.amp.GradScaler)
    assert "--amp bf16" in capsys.readouterr().err  # fp16 on a CPU is slow: the user is told what to use
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow at this scale
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    batch = next(iter(tr.train_loader.epoch(0)))
    tr._step(batch, 0.0)
    assert tr.scaler.get_scale() < 2.0**40  # the overflow was found and the scale backed off
    after = tr.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    tr.close()


def test_compile_trains_with_feature_taps(orl_data, tmp_path, teacher_weights):
    """``--compile --method at``: the attention maps come from taps inside the compiled student.

    Each compilation costs tens of seconds on a cold inductor cache, so: resnet32, the registry's smallest graph
    (half shufflenet_v2_x0_5's compile time, measured cold); batches of 80, which split ORL's 320 training and 80
    test images evenly, and an eager comparison on such a batch, so the student is compiled twice (training;
    evaluation without grad) and never for another batch size. The teacher is conftest's random resnet32: AT needs
    maps, not a trained teacher."""
    import json

    from torch._dynamo.eval_frame import OptimizedModule

    cfg = _cfg(orl_data, tmp_path / "c", student="resnet32", epochs=1, batch_size=80, compile=True, method="at",
               teacher="resnet32", teacher_weights=teacher_weights)
    tr = Trainer(cfg)
    assert isinstance(tr.model, OptimizedModule)
    summary = tr.fit()
    assert summary["top1"] is not None
    row = json.loads(open(tmp_path / "c" / "metrics.jsonl").readlines()[-1])
    assert row["train_at"] > 0 and row["train_loss"] == pytest.approx(row["train_ce"] + row["train_at"], rel=1e-4)
    # the compiled student computes what the eager one does
    x = next(iter(tr.train_loader.epoch(0))).images
    assert len(x) == 80
    tr.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(tr.model(x), tr.student(x), rtol=1e-3, atol=1e-3)  # student: the eager module
    tr.close()
    # and its checkpoint is an eager one: no "_orig_mod." prefixes from the compiled wrapper
    assert set(_state(tmp_path / "c")["model"]) == set(torch.load(teacher_weights))  # an eager resnet32's keys


def test_bf16_trains_methods_with_adapters(orl_data, tmp_path, teacher_weights):
    """``--amp bf16`` with methods that own adapters (FitNets' regressor, CRD's embedding heads, overhaul's
    connectors): their adapters take the student's bf16 signals under the step's autocast (a dtype clash
    stopped the run before). The adapters' gradients reach their float32 weights."""
    import json

    cfg = _cfg(orl_data, tmp_path / "r", student="resnet32", epochs=1, res=LOW, amp="bf16",
               method="fitnets+crd+overhaul", teacher="resnet32", teacher_weights=teacher_weights,
               method_options={"fitnets": {"stage1_epochs": 0}})
    tr = Trainer(cfg)
    before = [p.detach().clone() for m in tr.methods for p in m.parameters()]
    tr.fit()
    after = [p.detach() for m in tr.methods for p in m.parameters()]
    tr.close()
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    row = json.loads(open(tmp_path / "r" / "metrics.jsonl").readlines()[-1])
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("train_fitnets", "train_crd", "train_overhaul"))
