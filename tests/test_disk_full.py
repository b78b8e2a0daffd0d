"""A full disk (simulated ENOSPC) while converting or training: one line on stderr naming the file, a
non-zero exit, and the previous complete output intact."""
from __future__ import annotations

import builtins
import errno
import json
import os

import pytest

from fastkd.cli import main
from fastkd.converted import checksum_tree

from synthetic_orl import convert_opts

NO_SPACE = "fastkd: error: no space left on device while writing {}; free space and rerun (the previous complete file is kept)"


def _enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_full_disk_during_conversion_keeps_the_previous_conversion(fake_orl, tmp_path, monkeypatch, capsys):
    import tarfile

    from fastkd.converters.convert import convert

    root, _ = fake_orl
    out = str(tmp_path / "data")
    first = convert("orl_faces", root, out, convert_opts())
    written = []
    real_addfile = tarfile.TarFile.addfile

    def addfile(tar, info, fileobj=None):  # the disk fills up in the second shard
        if len(written) == 150:
            raise _enospc(tar.name)
        written.append(info.name)
        return real_addfile(tar, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    code, err = _run(["convert", "--dataset", "orl_faces", "--root", root, "--out", out, "--overwrite",
                      "--per-shard", "50", "--formats", "dali", "--workers", "1", "--quiet"], capsys)
    assert code == 1 and len(err) == 1
    partial = os.path.join(out + ".partial", "dali", "train")
    assert err[0].startswith("fastkd: error: no space left on device while writing " + partial)
    assert err[0].endswith("; free space and rerun (the previous complete file is kept)")
    assert checksum_tree(out) == first["checksums"]  # the earlier conversion, byte for byte


def test_full_disk_while_writing_metrics_keeps_the_previous_metrics(orl_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    metrics = str(out / "metrics.jsonl")
    writes = {"n": 0}
    real_open = builtins.open

    def open_(path, mode="r", *args, **kwargs):  # the second epoch's metrics do not fit on the disk
        name = os.path.basename(str(path))
        if name.startswith(".metrics.jsonl.") and name.endswith(".tmp") and "w" in mode:  # fastkd.atomic's temp
            writes["n"] += 1
            if writes["n"] == 2:
                raise _enospc(str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    code, err = _run(["train", "--data", orl_data, "--out", str(out), "--model", "shufflenet_v2_x0_5", "--epochs",
                      "2", "--batch-size", "64", "--res", "16", "--workers", "0", "--device", "cpu", "--quiet"],
                     capsys)
    assert code == 1 and err[-1] == NO_SPACE.format(metrics)  # the file, not its temporary name
    assert [json.loads(line)["epoch"] for line in real_open(out / "metrics.jsonl")] == [1]  # epoch 1, complete
    assert not (out / "summary.json").exists()
