"""Teacher cache integrity (issue 19): never a cached teacher output for other pixels, by construction (the
key names the decode path, the memory backend's holding tier and a view-code version derived from the view
functions' output; every row carries a fingerprint of its view, checked on every read), and damage that is
refilled, not fatal, where the run can fill."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch

from fastkd.cache import TeacherCache, cache_key
from fastkd.cache import key as key_mod
from fastkd.cache import store as store_mod
from fastkd.cache.fingerprint import view_fingerprint
from fastkd.cache.store import DamagedRows
from fastkd.errors import UserError
from fastkd.models import create_model
from fastkd.pipelines.memory_backend import ENV_LIMIT
from fastkd.train.config import TrainConfig

KEY = {"teacher_sha256": "0" * 64, "seed": 0, "epochs": 1, "count": 8}
STORAGE = {"dtype": "float16", "topk": 0}
SIGNALS = {"logits": {"shape": [5]}}


def _quiet(msg):
    pass


def _cli(*args):
    from fastkd.cli import main

    main([str(a) for a in args])


@pytest.fixture
def no_memory_limit(monkeypatch):
    """``--memory-limit`` sets FASTKD_MEMORY_LIMIT for the rest of the process: restore it after the test."""
    monkeypatch.setenv(ENV_LIMIT, "1G")
    monkeypatch.delenv(ENV_LIMIT)


# ---- the key -------------------------------------------------------------------------------------------


def test_memory_limit_capping_the_photos_is_refused(orl_data, tmp_path, capsys, no_memory_limit):
    """The bug of issue 19: `cache build` with the memory backend at the default limit (ORL's 320 photos held
    whole at 92 x 112) read by a run with --memory-limit 9M (held capped at 82 px: other pixels). The key
    now differs in the holding tier, and the run stops with exit 2 and one line."""
    torch.manual_seed(0)
    weights = tmp_path / "shufflenet.pt"
    torch.save(create_model("shufflenet_v2_x0_5", 40, False).state_dict(), weights)
    common = ["--data", orl_data, "--teacher", "shufflenet_v2_x0_5", "--teacher-weights", weights, "--epochs", 1,
              "--res", 72, "--backend", "memory", "--workers", 0, "--device", "cpu", "--quiet"]
    cache = tmp_path / "cache"
    _cli("cache", "build", *common, "--out", cache, "--batch-size", 256)
    assert "memory_hold: whole" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        _cli("train", *common, "--model", "shufflenet_v2_x0_5", "--method", "kd", "--teacher-cache", cache,
             "--out", tmp_path / "run", "--memory-limit", "9M", "--batch-size", 64)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("memory backend:")]
    assert exit_info.value.code == 2 and len(err) == 1
    assert "memory_hold (cache whole, run capped (shorter side <= 82 px))" in err[0]


def test_key_names_decode_path_device_and_derived_view_version(orl_data, make_loader, monkeypatch):
    cfg = TrainConfig(data=orl_data, out="", student="resnet32", teacher_weights="unused", backend="torch", res=16, epochs=1)
    key = cache_key(cfg, make_loader(orl_data, "train", backend="torch", res=16, workers=0, batch_size=32),
                    "resnet32", 1, "1" * 64)
    version = key_mod.view_code_version()
    assert len(version) == 16 and key["view_version"] == version
    assert key["decode_path"] == "PIL base squares on cpu" and key["memory_hold"] is None
    assert key["device"] == "cpu" and key["torch"] == torch.__version__ and key["teacher_sha256"] == "1" * 64
    photos = make_loader(orl_data, "train", backend="torch", res=72, workers=0, batch_size=32)
    from fastkd.pipelines import jpeg_window

    window = "libjpeg window decoder" if jpeg_window.AVAILABLE else "PIL"
    assert cache_key(cfg, photos, "resnet32", 1, "1" * 64)["decode_path"] == f"{window} views on cpu"
    memory = make_loader(orl_data, "train", backend="memory", res=72, workers=0, batch_size=32)
    assert (memory.backend.decode_path, memory.backend.hold) == ("PIL-decoded held photos + uint8 resize on cpu", "whole")
    # derived, not declared: a view function that gives other pixels gives another version
    from fastkd.pipelines import view_policy

    real = view_policy.pad_crop_flip
    monkeypatch.setattr(view_policy, "pad_crop_flip", lambda *a: real(*a).add_(1))
    key_mod.view_code_version.cache_clear()
    try:
        assert key_mod.view_code_version() != version
        monkeypatch.setattr(view_policy, "pad_crop_flip", real)
        key_mod.view_code_version.cache_clear()
        assert key_mod.view_code_version() == version
    finally:
        key_mod.view_code_version.cache_clear()


def test_teacher_is_hashed_and_loaded_from_the_same_bytes(teacher_weights, tmp_path):
    """The file is read once: replacing it after the key was computed changes neither the key's hash nor
    the weights the teacher is loaded with."""
    from fastkd.train.teacher import TeacherSource, teacher_network

    path = tmp_path / "teacher.pt"
    shutil.copy(teacher_weights, path)
    original = path.read_bytes()
    cfg = TrainConfig(data="unused", out="", student="resnet32", teacher="resnet32", teacher_weights=str(path),
                      teacher_cache=str(tmp_path / "cache"))
    model = teacher_network(cfg, 40, True, torch.device("cpu"))
    assert model.fastkd_weights_sha256 == hashlib.sha256(original).hexdigest()
    torch.manual_seed(1)
    torch.save(create_model("resnet32", 40, True).state_dict(), path)  # replaced behind the run's back
    source = object.__new__(TeacherSource)
    source.module, source.cfg, source.device = model, cfg, torch.device("cpu")
    source._materialise()
    expected = torch.load(teacher_weights, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_key_is_compared_again_once_the_fill_lock_is_held(tmp_path, monkeypatch):
    root = str(tmp_path / "c")
    TeacherCache.open(root, KEY, STORAGE, SIGNALS, 1, fill=True, log=_quiet).close()
    real, calls = TeacherCache.read_meta, []

    def first_look_sees_nothing(path):  # another run created the cache between the first look and the lock
        calls.append(path)
        return None if len(calls) == 1 else real(path)

    monkeypatch.setattr(TeacherCache, "read_meta", staticmethod(first_look_sees_nothing))
    with pytest.raises(UserError, match=r"filled for another run: seed \(cache 0, run 1\)"):
        TeacherCache.open(root, {**KEY, "seed": 1}, STORAGE, SIGNALS, 1, fill=True, log=_quiet)
    monkeypatch.undo()
    again = TeacherCache.open(root, KEY, STORAGE, SIGNALS, 1, fill=True, log=_quiet)  # the lock was released
    again.close()


# ---- fingerprints --------------------------------------------------------------------------------------


def test_fingerprint_depends_on_the_pixels_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 24, 24, generator=g)
    fp = view_fingerprint(x)
    assert fp.dtype == torch.int64 and fp.shape == (10, 2)
    assert torch.equal(view_fingerprint(x.contiguous(memory_format=torch.channels_last)), fp)  # layout
    assert torch.equal(view_fingerprint(x[3:7]), fp[3:7])  # batch size and position
    y = x.clone()
    y[4, 1, 5, 6] = torch.nextafter(y[4, 1, 5, 6], torch.tensor(10.0))  # one value, one ulp
    changed = (view_fingerprint(y) != fp).any(1)
    assert changed.tolist() == [i == 4 for i in range(10)]
    assert not torch.equal(view_fingerprint(x.flip(3))[0], fp[0])  # mirrored: same values, other places


def _filled(tmp_path, images, storage=STORAGE):
    cache = TeacherCache.open(str(tmp_path / "c"), KEY, storage, SIGNALS, 1, fill=True, log=_quiet)
    idx = np.arange(8)
    cache.write(0, idx, {"logits": torch.randn(8, 5)}, fingerprint=view_fingerprint(images).numpy())
    return cache, idx


def test_swapped_pixels_or_a_tampered_fingerprint_are_refused(tmp_path):
    images = torch.randn(8, 3, 16, 16)
    cache, idx = _filled(tmp_path, images)
    assert cache.read(0, idx, ["logits"], "cpu", fingerprint=view_fingerprint(images).numpy())["logits"].shape == (8, 5)
    swapped = images.clone()
    swapped[[2, 5]] = images[[5, 2]]  # the rows' outputs served for other pixels
    with pytest.raises(UserError, match=r"cached logits of dataset index 2 in epoch 1 \(folder epoch0000, 2 of the "
                                        r"batch's 8 views\) was computed on other pixels .*fingerprint mismatch") as info:
        cache.read(0, idx, ["logits"], "cpu", fingerprint=view_fingerprint(swapped).numpy())
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="dataset index 5 in epoch 1 .*fingerprint mismatch"):  # a filling run too
        cache.write(0, idx[5:], {"logits": torch.randn(3, 5)}, fingerprint=view_fingerprint(swapped[5:]).numpy())
    cache.close()
    fp = np.load(tmp_path / "c" / "epoch0000" / "logits.fp.npy", mmap_mode="r+")
    fp[6, 1] += 1  # the fingerprint file altered
    fp.flush()
    del fp
    reader = TeacherCache.open(str(tmp_path / "c"), KEY, STORAGE, SIGNALS, 1, fill=False)
    with pytest.raises(UserError, match="dataset index 6 in epoch 1 .*fingerprint mismatch"):
        reader.read(0, idx, ["logits"], "cpu", fingerprint=view_fingerprint(images).numpy())


def test_float16_overflow_is_its_own_error(tmp_path):
    for storage in (STORAGE, {"dtype": "float16", "topk": 2}):
        shutil.rmtree(tmp_path / "c", ignore_errors=True)
        cache = TeacherCache.open(str(tmp_path / "c"), KEY, storage, SIGNALS, 1, fill=True, log=_quiet)
        logits = torch.zeros(8, 5)
        logits[3, 1] = 7e4
        with pytest.raises(UserError, match=r"teacher signal logits reaches 7e\+04 in epoch 1, beyond float16's range "
                                            r".*--cache-dtype float32"):
            cache.write(0, np.arange(8), {"logits": logits})
        assert not cache.has(0, np.arange(8), ["logits"])  # nothing written
        cache.close()
    fine = TeacherCache.open(str(tmp_path / "f32"), KEY, {"dtype": "float32", "topk": 0}, SIGNALS, 1, fill=True,
                             log=_quiet)
    fine.write(0, np.arange(8), {"logits": logits})
    assert float(fine.read(0, np.arange(8), ["logits"], "cpu")["logits"][3, 1]) == 7e4


# ---- damage: refilled where the run can fill --------------------------------------------------------------


@pytest.fixture(scope="module")
def built(orl_data, teacher_weights, tmp_path_factory):
    """A float32 cache of 1 epoch of resnet32 at 16 px filled by `cache build` in batches of 256."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    _cli("cache", "build", "--teacher-weights", teacher_weights, "--teacher", "resnet32", "--data", orl_data,
         "--epochs", 1, "--out", cache, "--res", 16, "--workers", 0, "--device", "cpu", "--quiet",
         "--cache-dtype", "float32")
    return cache


def _train_args(orl_data, teacher_weights, cache, out):
    return ["train", "--data", orl_data, "--model", "resnet32", "--teacher", "resnet32", "--teacher-weights",
            teacher_weights, "--method", "kd", "--epochs", 1, "--res", 16, "--batch-size", 64, "--workers", 0,
            "--device", "cpu", "--quiet", "--teacher-cache", cache, "--cache-dtype", "float32", "--out", out]


def _damage(folder, name, row):
    arr = np.load(folder / "epoch0000" / name, mmap_mode="r+")
    arr[row].flat[0] += 1
    arr.flush()
    del arr


def test_damaged_row_is_refilled_in_a_filling_run_and_stops_a_read_only_one(orl_data, teacher_weights, built,
                                                                            tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    good = np.load(cache / "epoch0000" / "logits.values.npy")[17].copy()
    _damage(cache, "logits.values.npy", 17)
    idx = np.arange(16, 20)
    reader = TeacherCache.open(str(cache), TeacherCache.read_meta(str(cache))["key"], {"dtype": "float32", "topk": 0},
                               {"logits": {"shape": [40]}}, 1, fill=False)
    with pytest.raises(DamagedRows, match=r"logits.values.npy is corrupted \(row of dataset index 17 fails its CRC-32\)"):
        reader.read(0, idx, ["logits"], "cpu")  # read-only: stops, one line
    reader.close()
    capsys.readouterr()
    _cli(*_train_args(orl_data, teacher_weights, cache, tmp_path / "run"))  # every other row passes its fingerprint
    err = capsys.readouterr().err
    assert ("1 row(s) of epoch 1 (folder epoch0000; first: logits of dataset index 17) failed their CRC-32; "
            "recomputed by the teacher and rewritten") in err
    again = TeacherCache(str(cache), TeacherCache.read_meta(str(cache)), writable=False)
    row = again.read(0, idx, ["logits"], "cpu")["logits"][1].numpy()  # CRC and fingerprint hold again
    assert np.allclose(row, good, rtol=1e-4, atol=1e-5)  # the teacher's output again (batch 64, not 256)


def test_tampered_fingerprint_stops_a_training_run_with_one_line(orl_data, teacher_weights, built, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    _damage(cache, "logits.fp.npy", 33)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _cli(*_train_args(orl_data, teacher_weights, cache, tmp_path / "run"))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("teacher cache ")]
    assert exit_info.value.code == 2 and len(err) == 1  # besides the cache's status line
    assert "cached logits of dataset index 33 in epoch 1" in err[0] and "fingerprint mismatch" in err[0]


# ---- disk ----------------------------------------------------------------------------------------------


def test_stale_temporary_files_of_a_killed_fill_are_removed(tmp_path):
    root = tmp_path / "c"
    cache = TeacherCache.open(str(root), {**KEY, "epochs": 2}, STORAGE, SIGNALS, 2, fill=True, log=_quiet)
    cache.close()  # nothing written: the next open fills (under the lock)
    ours = [root / "epoch0000" / "logits.values.npy.tmp-4242", root / "epoch0001" / "logits.crc.npy.tmp-17",
            root / ".cache.json.4242.140.tmp"]
    theirs = [root / "epoch0000" / "notes.tmp-1", root / "epoch0000" / "logits.values.npy.tmp-x",
              root / "logits.values.npy.tmp-5", root / "mine" / "a.npy.tmp-3"]
    for path in ours + theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    lines = []
    TeacherCache.open(str(root), {**KEY, "epochs": 2}, STORAGE, SIGNALS, 2, fill=True, log=lines.append).close()
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert lines == [f"teacher cache {root}: removed 3 temporary file(s) of an interrupted fill"]
    # a complete cache: removed too, when no run holds the lock
    cache = TeacherCache.open(str(root), {**KEY, "epochs": 2}, STORAGE, SIGNALS, 2, fill=True, log=_quiet)
    for e in range(2):
        cache.write(e, np.arange(8), {"logits": torch.zeros(8, 5)})
    cache.close()
    ours[0].write_bytes(b"x")
    TeacherCache.open(str(root), {**KEY, "epochs": 2}, STORAGE, SIGNALS, 2, fill=True, log=_quiet).close()
    assert not ours[0].exists()


def test_disk_check_leaves_room_for_the_checkpoints(tmp_path, monkeypatch):
    from fastkd.train.teacher import checkpoint_reserve

    cfg = TrainConfig(data="unused", out=str(tmp_path / "run"), student="resnet32", momentum=0.9)
    student = create_model("resnet32", 40, True)
    params = sum(p.numel() * 4 for p in student.parameters())
    buffers = sum(b.numel() * b.element_size() for b in student.buffers())
    reserve = checkpoint_reserve(cfg, 40, True)
    # model + momentum in checkpoint.pt, the model in model.safetensors; each file + its temporary copy
    assert reserve == 2 * (2 * params + buffers) + 2 * (params + buffers)
    assert checkpoint_reserve(TrainConfig(data="unused", out="", student="resnet32"), 40, True) == 0  # `cache build`: no checkpoints
    real = shutil.disk_usage
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda path: real(path)._replace(free=300))
    lines = []
    with pytest.raises(UserError, match=r"needs 248 B \+ .* for the run's checkpoints but .* free"):
        TeacherCache.open(str(tmp_path / "c"), KEY, STORAGE, SIGNALS, 1, fill=True, log=lines.append, reserve=reserve)
    TeacherCache.open(str(tmp_path / "c"), KEY, STORAGE, SIGNALS, 1, fill=True, log=_quiet).close()  # fits alone
