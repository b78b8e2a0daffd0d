"""Teacher-output cache: exact replay (bit-identical student weights), stated rounding of float16 and top-k
storage, and refusal of every bad cache (other key, truncated or corrupted array, full disk, two fillers)."""
from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch

from fastkd.cache import TeacherCache
from fastkd.cache import store as store_mod
from fastkd.errors import UserError
from fastkd.methods.kd import kd_loss
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import Trainer
from run_tools import fit

FAST = dict(student="resnet32", teacher="resnet32", epochs=1, batch_size=64, lr=0.05, res=16, workers=0,
            progress=False, device="cpu")
METHODS = "kd+at+pkt+rkd+fitnets"  # logits, stage maps, the embedding; FitNets adds a randomly initialised adapter


def _cfg(data, out, teacher_weights, **kw):
    return TrainConfig(data=data, out=str(out), teacher_weights=teacher_weights, **{**FAST, "method": METHODS, **kw})


@pytest.fixture(scope="module")
def filled(orl_data, teacher_weights, tmp_path_factory):
    """An online run, and a float32 cache filled by the same run with --teacher-cache."""
    root = tmp_path_factory.mktemp("cached")
    online = fit(_cfg(orl_data, root / "online", teacher_weights))
    fill = fit(_cfg(orl_data, root / "fill", teacher_weights, teacher_cache=str(root / "cache"), cache_dtype="float32"))
    return root, online, fill


def test_cached_float32_run_is_bit_identical_to_online(orl_data, teacher_weights, filled):
    root, (online_mode, online), (fill_mode, fill) = filled
    assert (online_mode, fill_mode) == ("online", "filling")
    trainer = Trainer(_cfg(orl_data, root / "read", teacher_weights, teacher_cache=str(root / "cache"),
                           cache_dtype="float32"))
    assert trainer.teacher_source.mode == "cached"
    assert next(trainer.teacher.parameters()).is_meta  # the teacher was never loaded
    trainer.fit()
    trainer.close()
    read = checkpoint.load(root / "read" / "checkpoint.pt")["model"]
    for weights in (fill, read):
        assert all(torch.equal(online[k], weights[k]) for k in online)
    info = TeacherCache.read_meta(str(root / "cache"))
    assert sorted(info["signals"]) == ["embedding", "logits", "stage1", "stage2", "stage3"]


def test_cache_of_another_key_is_refused_naming_the_part(orl_data, teacher_weights, filled):
    root = filled[0]
    cache = str(root / "cache")
    with pytest.raises(UserError, match=r"seed \(cache 0, run 1\)"):
        Trainer(_cfg(orl_data, root / "x", teacher_weights, teacher_cache=cache, cache_dtype="float32", seed=1))
    with pytest.raises(UserError, match=r"cache_dtype \(cache float32, run float16\)"):
        Trainer(_cfg(orl_data, root / "x", teacher_weights, teacher_cache=cache))
    with pytest.raises(UserError, match=r"epochs \(cache holds 1, run needs 2\)"):
        Trainer(_cfg(orl_data, root / "x", teacher_weights, teacher_cache=cache, cache_dtype="float32", epochs=2))
    with pytest.raises(UserError, match="augment"):
        Trainer(_cfg(orl_data, root / "x", teacher_weights, teacher_cache=cache, cache_dtype="float32", cutout=0.5))


def _copy(root, name):
    dst = root / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(root / "cache", dst)
    return dst


def _open(path):
    return TeacherCache(str(path), TeacherCache.read_meta(str(path)), writable=False)


def test_truncated_and_corrupted_arrays_are_refused(filled):
    root = filled[0]
    idx = np.arange(8)
    short = _copy(root, "short")
    values = short / "epoch0000" / "logits.values.npy"
    os.truncate(values, os.path.getsize(values) - 4)
    with pytest.raises(UserError, match="logits.values.npy is truncated"):
        _open(short).read(0, idx, ["logits"], "cpu")
    bad = _copy(root, "bad")
    values = bad / "epoch0000" / "stage2.values.npy"
    arr = np.load(values, mmap_mode="r+")
    arr[5, 0, 0, 0] += 1.0  # one value of one row changed behind the cache's back
    arr.flush()
    del arr
    with pytest.raises(UserError, match="stage2.values.npy is corrupted .*dataset index 5"):
        _open(bad).read(0, idx, ["stage2"], "cpu")
    assert _open(bad).read(0, idx[6:], ["stage2"], "cpu")["stage2"].shape == (2, 32, 8, 8)


KEY = {"teacher_sha256": "0" * 64, "seed": 0, "epochs": 2, "count": 10}
STORAGE = {"dtype": "float16", "topk": 0}
SIGNALS = {"logits": {"shape": [5]}}


def test_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    real = shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=100)

    monkeypatch.setattr(store_mod.shutil, "disk_usage", tiny)
    lines = []
    with pytest.raises(UserError, match="needs 620 B but .* has 100 B free"):
        TeacherCache.open(str(tmp_path / "c"), KEY, STORAGE, SIGNALS, 2, fill=True, log=lines.append)
    assert not (tmp_path / "c").exists()
    # 31 B: 10 B of float16 values, the CRC (4), the view fingerprint (16) and the written byte (1)
    assert lines == [f"teacher cache {tmp_path / 'c'}: 31 B per view (logits float16 [5]) x 10 views x 2 epochs "
                     "= 620 B (100 B free)"]


def test_two_fillers_interrupted_fill_resumes(tmp_path):
    root = str(tmp_path / "c")
    first = TeacherCache.open(root, KEY, STORAGE, SIGNALS, 2, fill=True, log=lambda m: None)
    with pytest.raises(UserError, match="another run is filling"):
        TeacherCache.open(root, KEY, STORAGE, SIGNALS, 2, fill=True, log=lambda m: None)
    logits = torch.randn(4, 5)
    first.write(0, np.array([1, 3, 5, 7]), {"logits": logits})
    first.close()  # interrupted: epoch 0 half written, epoch 1 not at all
    again = TeacherCache.open(root, KEY, STORAGE, SIGNALS, 2, fill=True, log=lambda m: None)
    assert again.has(0, np.array([3, 7]), ["logits"]) and not again.has(0, np.array([3, 4]), ["logits"])
    assert not again.complete(["logits"], 2)
    got = again.read(0, np.array([7, 1]), ["logits"], "cpu")["logits"]
    assert torch.equal(got, logits[[3, 0]].half().float())
    again.write(0, np.array([1, 2]), {"logits": torch.zeros(2, 5)})  # row 1 is kept, row 2 filled
    assert torch.equal(again.read(0, np.array([1]), ["logits"], "cpu")["logits"], logits[:1].half().float())
    again.close()


def _kd_through_cache(tmp_path, storage, teacher, student, temperature):
    cache = TeacherCache.open(str(tmp_path / "c"), {**KEY, "count": len(teacher), "epochs": 1}, storage,
                              {"logits": {"shape": [teacher.shape[1]]}}, 1, fill=True, log=lambda m: None)
    idx = np.arange(len(teacher))
    cache.write(0, idx, {"logits": teacher})
    read = cache.read(0, idx, ["logits"], "cpu")["logits"]
    cache.close()
    return read, kd_loss(student, read, temperature), kd_loss(student, teacher, temperature)


def test_float16_storage_changes_the_kd_loss_only_by_float16_rounding(tmp_path):
    g = torch.Generator().manual_seed(0)
    teacher, student, T = 6 * torch.randn(64, 100, generator=g), 3 * torch.randn(64, 100, generator=g), 4.0
    read, cached, exact = _kd_through_cache(tmp_path, STORAGE, teacher, student, T)
    assert torch.equal(read, teacher.half().float())
    # |delta z| <= 2^-11 |z| (+ 2^-25 below float16's normal range) moves log p by at most a = 2 eps,
    # eps = max|delta z| / T, so |KL' - KL| <= (e^{2 eps} - 1) sum_c p_c |log p_c - log q_c| + 2 eps e^{2 eps}
    eps = (2.0**-11 * teacher.abs().amax(1) + 2.0**-25) / T
    p, log_p = torch.softmax(teacher / T, 1), torch.log_softmax(teacher / T, 1)
    r = (p * (log_p - torch.log_softmax(student / T, 1)).abs()).sum(1)
    bound = T**2 * ((torch.exp(2 * eps) - 1) * r + 2 * eps * torch.exp(2 * eps)).mean()
    assert cached != exact and abs(float(cached - exact)) <= float(bound)


def test_topk_storage_changes_the_kd_loss_only_by_the_dropped_tail(tmp_path):
    g = torch.Generator().manual_seed(1)
    teacher, student, k = 6 * torch.randn(64, 100, generator=g), 3 * torch.randn(64, 100, generator=g), 10
    read, cached, exact = _kd_through_cache(tmp_path, {"dtype": "float32", "topk": k}, teacher, student, 1.0)
    top = teacher.topk(k, 1)
    assert torch.equal(read.gather(1, top.indices), top.values)
    p, p_read = torch.softmax(teacher, 1), torch.softmax(read, 1)
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(1, top.indices, False)
    assert torch.allclose((p_read * tail).sum(1), (p * tail).sum(1), rtol=1e-5)  # the tail mass is kept
    # at T = 1 the top-k probabilities are kept and the tail (mass tau over m = C - k classes) is made
    # uniform: |KL' - KL| <= tau log m + 2 tau max_tail |log q|
    tau, m = (p * tail).sum(1), teacher.shape[1] - k
    log_q = torch.log_softmax(student, 1).abs().masked_fill(~tail, 0).amax(1)
    bound = (tau * math.log(m) + 2 * tau * log_q).mean()
    assert cached != exact and abs(float(cached - exact)) <= float(bound) * (1 + 1e-5)


def test_cache_build_fills_what_train_reads_and_info_reports(orl_data, teacher_weights, tmp_path, capsys):
    from fastkd.cli import main

    cache = str(tmp_path / "cache")
    main(["cache", "build", "--teacher-weights", teacher_weights, "--teacher", "resnet32", "--data", orl_data,
          "--epochs", "1", "--out", cache, "--res", "16", "--workers", "0", "--device", "cpu", "--quiet",
          "--batch-size", "160"])
    assert "1/1 epochs filled (320 views each)" in capsys.readouterr().out
    trainer = Trainer(_cfg(orl_data, tmp_path / "run", teacher_weights, method="kd", teacher_cache=cache))
    assert trainer.teacher_source.mode == "cached"  # the key of `cache build` is the training run's
    trainer.close()
    main(["cache", "info", cache])
    assert "signal logits: float16 [40] (computed in float32), 320/320 views written" in capsys.readouterr().out
    crc = os.path.join(cache, "epoch0000", "logits.crc.npy")
    os.truncate(crc, os.path.getsize(crc) - 8)
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "info", cache])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "logits.crc.npy is truncated" in err[0]


def test_two_ranks_fill_disjoint_rows_and_read_them_back(orl_data, teacher_weights, tmp_path):
    """torchrun, 2 ranks: each writes the rows of the samples it trains on into the shared maps; together they
    fill every view of both epochs, and a second 2-rank run reads them all (the teacher never loaded) and ends
    with the filling run's exact weights."""
    from torchrun_tools import torchrun

    from fastkd.cache.info import cache_info

    cache = tmp_path / "cache"
    args = ["-m", "fastkd", "train", "--data", orl_data, "--model", "resnet32", "--teacher", "resnet32",
            "--teacher-weights", teacher_weights, "--method", "kd+at", "--epochs", "2", "--res", "16",
            "--batch-size", "32", "--workers", "0", "--device", "cpu", "--quiet", "--teacher-cache", str(cache),
            "--cache-dtype", "float32"]
    runs = {}
    for name in ("fill", "read"):
        result = torchrun(2, *args, "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = result.stderr
        if name == "fill":
            info = cache_info(str(cache))  # 320 views per epoch: rank 0's 160 and rank 1's 160
            assert info["epochs_filled"] == 2
            assert len(info["rows_written"]) == 2 and "logits" in info["rows_written"][0]
            assert all(rows == 320 for epoch in info["rows_written"] for rows in epoch.values())
    assert ": filling (" in runs["fill"] and ": cached (" in runs["read"]
    fill, read = (checkpoint.load(tmp_path / n / "checkpoint.pt")["model"] for n in ("fill", "read"))
    assert all(torch.equal(fill[k], read[k]) for k in fill)
