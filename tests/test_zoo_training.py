"""Zoo models in the training paths: a timm teacher's logits, stage maps and embedding are cached and read back
bit-identically (float32) like a seed teacher's, and ``fastkd grid --teachers timm:...`` trains, caches and
distils into a torchvision student. Random initialisation, ORL faces at 32 px, one epoch."""
from __future__ import annotations

import json

import pytest
import torch

from fastkd.cache import TeacherCache
from fastkd.cli import main
from fastkd.models import create_model
from fastkd.train.config import TrainConfig
from run_tools import fit

pytest.importorskip("timm")

TEACHER, STUDENT = "timm:convnext_atto", "torchvision:mobilenet_v3_small"
FAST = dict(student=STUDENT, teacher=TEACHER, epochs=1, batch_size=40, lr=0.05, res=32, workers=0, progress=False,
            device="cpu", train_split="test", eval_split="test")


@pytest.fixture(scope="module")
def timm_teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("zoo") / "convnext.pt"
    torch.save(create_model(TEACHER, 40, True, res=32).state_dict(), path)
    return str(path)


def test_timm_teacher_signals_cached_and_read_bit_identically(orl_data, timm_teacher, tmp_path):
    cfg = dict(FAST, data=orl_data, teacher_weights=timm_teacher, method="kd+at+pkt+fitnets")
    online_mode, online = fit(TrainConfig(out=str(tmp_path / "online"), **cfg))
    cached = dict(cfg, teacher_cache=str(tmp_path / "cache"), cache_dtype="float32")
    fill_mode, fill = fit(TrainConfig(out=str(tmp_path / "fill"), **cached))
    read_mode, read = fit(TrainConfig(out=str(tmp_path / "read"), **cached))
    assert (online_mode, fill_mode, read_mode) == ("online", "filling", "cached")
    for weights in (fill, read):
        assert all(torch.equal(online[k], weights[k]) for k in online)
    info = TeacherCache.read_meta(str(tmp_path / "cache"))
    assert sorted(info["signals"]) == ["embedding", "logits", "stage1", "stage2", "stage3"]


def test_grid_with_a_timm_teacher_and_a_torchvision_student(orl_data, timm_teacher, tmp_path):
    out = tmp_path / "grid"
    main(["grid", "--data", orl_data, "--out", str(out), "--teachers", TEACHER, "--student", STUDENT,
          "--teacher-weights", f"{TEACHER}={timm_teacher}", "--methods", "kd,rkd", "--seeds", "0", "--epochs", "1",
          "--batch-size", "40", "--res", "32", "--workers", "0", "--device", "cpu", "--quiet"])
    teacher_dir = next(p for p in out.iterdir() if p.is_dir() and "convnext_atto" in p.name)
    sources = {m: json.load(open(teacher_dir / m / "seed0" / "summary.json"))["teacher_source"] for m in ("kd", "rkd")}
    assert sources == {"kd": "cached", "rkd": "cached"}
    summary = json.load(open(teacher_dir / "kd" / "seed0" / "summary.json"))
    assert (summary["student"], summary["teacher"]) == (STUDENT, TEACHER)
    assert TEACHER in open(out / "report.md").read()
