"""fastkd/atomic.py: a write either completes or leaves the previous file as it was, and no temporary file."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from fastkd.atomic import atomic_torch_save, atomic_write_json, atomic_write_text


def test_writes_replace_the_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": [1, 2]})
    atomic_write_json(path, {"x": [3]})
    assert json.loads(path.read_text()) == {"x": [3]} and path.read_text().endswith("\n")
    atomic_write_text(tmp_path / "b.txt", "hello")
    assert (tmp_path / "b.txt").read_text() == "hello"
    atomic_torch_save(tmp_path / "c.pt", {"w": torch.arange(4)})
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(4))
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.txt", "c.pt"]


def test_disk_full_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    atomic_write_json(tmp_path / "a.json", {"old": True})
    atomic_write_text(tmp_path / "b.txt", "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(tmp_path / "a.json", {"new": list(range(1000))})
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(tmp_path / "b.txt", "new")
    assert json.loads((tmp_path / "a.json").read_text()) == {"old": True}
    assert (tmp_path / "b.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.txt"]


def test_a_failing_torch_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save(path, {"step": 1})
    with pytest.raises(Exception):  # a lambda does not pickle: torch.save fails after writing part of the file
        atomic_torch_save(path, {"step": 2, "weights": torch.zeros(1000), "fn": lambda: None})
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]
