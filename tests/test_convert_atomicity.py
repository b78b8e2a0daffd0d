"""Conversion atomicity: an interrupted conversion leaves nothing that looks converted, keeps an older
conversion it was overwriting, and resumes shard by shard without duplicates or gaps (synthetic ORL tree)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastkd.converters import convert as convert_module
from fastkd.converters.convert import convert
from fastkd.converted import ShardReader, checksum_tree
from fastkd.errors import UserError
from fastkd.pipelines import open_converted
from synthetic_orl import convert_opts as _opts


class SimulatedCrash(RuntimeError):
    pass


def _crash_after(monkeypatch, n: int):
    """Make the converter's shard writer raise on its (n+1)-th shard, as an interruption mid-conversion."""
    original = convert_module.write_shard
    calls = {"n": 0}

    def write(*args, **kwargs):
        if calls["n"] >= n:
            raise SimulatedCrash("simulated interruption")
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(convert_module, "write_shard", write)
    return calls


def test_interrupted_conversion_leaves_nothing_converted(fake_orl, tmp_path, monkeypatch):
    root, _ = fake_orl
    out = str(tmp_path / "data")
    calls = _crash_after(monkeypatch, 2)
    with pytest.raises(SimulatedCrash):
        convert("orl_faces", root, out, _opts(per_shard=100))
    assert calls["n"] == 2
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    assert not os.path.exists(out)
    assert os.path.isdir(out + ".partial")  # the half-written work lives here only
    with pytest.raises(UserError):
        open_converted(out)
    monkeypatch.undo()
    manifest = convert("orl_faces", root, out, _opts())  # a second run succeeds and cleans up
    assert manifest["splits"]["train"]["count"] == 320
    assert not os.path.exists(out + ".partial")
    assert open_converted(out).manifest == manifest


def test_open_converted_names_the_interruption(fake_orl, tmp_path, monkeypatch):
    root, _ = fake_orl
    out = str(tmp_path / "data")
    _crash_after(monkeypatch, 2)
    with pytest.raises(SimulatedCrash):
        convert("orl_faces", root, out, _opts(per_shard=100))
    with pytest.raises(UserError, match="interrupted"):
        open_converted(out)


def test_interrupted_overwrite_keeps_the_old_conversion(fake_orl, tmp_path, monkeypatch):
    root, _ = fake_orl
    out = str(tmp_path / "data")
    first = convert("orl_faces", root, out, _opts())
    old_bytes = (tmp_path / "data" / "manifest.json").read_bytes()
    _crash_after(monkeypatch, 3)
    with pytest.raises(SimulatedCrash):
        convert("orl_faces", root, out, _opts(overwrite=True, jpeg_quality=50, per_shard=100))
    assert (tmp_path / "data" / "manifest.json").read_bytes() == old_bytes
    assert checksum_tree(out) == first["checksums"]
    assert open_converted(out).manifest["options"]["jpeg_quality"] == 90


def test_interrupted_conversion_resumes_without_duplicates_or_gaps(fake_orl, tmp_path, monkeypatch):
    root, _ = fake_orl
    whole = convert("orl_faces", root, str(tmp_path / "whole"), _opts(per_shard=100))
    out = str(tmp_path / "data")
    _crash_after(monkeypatch, 2)  # train has 4 shards of <= 100: two finished, then the crash
    with pytest.raises(SimulatedCrash):
        convert("orl_faces", root, out, _opts(per_shard=100))
    monkeypatch.undo()
    calls = _crash_after(monkeypatch, 10**6)
    resumed = convert("orl_faces", root, out, _opts(per_shard=100))
    assert calls["n"] == 3  # train shards 3 and 4, then the test split's single shard
    assert resumed == whole and checksum_tree(out) == whole["checksums"]
    table = ShardReader(os.path.join(out, "dali", "train"), ["shard-00000.tar"]).table
    assert len(table) == 320 and sorted(table["label"].tolist()) == sorted(np.repeat(np.arange(40), 8).tolist())


def test_resume_with_other_options_starts_over(fake_orl, tmp_path, monkeypatch):
    root, _ = fake_orl
    out = str(tmp_path / "data")
    _crash_after(monkeypatch, 2)
    with pytest.raises(SimulatedCrash):
        convert("orl_faces", root, out, _opts(per_shard=100))
    monkeypatch.undo()
    calls = _crash_after(monkeypatch, 10**6)
    manifest = convert("orl_faces", root, out, _opts(per_shard=100, jpeg_quality=70))
    assert calls["n"] == 5 and manifest["options"]["jpeg_quality"] == 70


def test_resume_drops_what_a_killed_writer_left(fake_orl, tmp_path, monkeypatch):
    """A SIGKILL mid-write leaves a temporary file; the resumed conversion must not list it as data."""
    root, _ = fake_orl
    whole = convert("orl_faces", root, str(tmp_path / "whole"), _opts(per_shard=100))
    out = str(tmp_path / "data")
    _crash_after(monkeypatch, 2)
    with pytest.raises(SimulatedCrash):
        convert("orl_faces", root, out, _opts(per_shard=100))
    monkeypatch.undo()
    train = os.path.join(out + ".partial", "dali", "train")
    for stale in ("shard-00002.tar.tmp", ".shard-00002.done.json.123.456.tmp"):
        with open(os.path.join(train, stale), "wb") as f:
            f.write(b"torn")
    resumed = convert("orl_faces", root, out, _opts(per_shard=100))
    assert resumed == whole and checksum_tree(out) == whole["checksums"]
