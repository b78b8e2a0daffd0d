"""The `fastkd` command: listings, one-line errors with exit code 2, and a train/eval round trip."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastkd.converters import DATASETS
from fastkd.methods import list_methods
from fastkd.models import list_models
from fastkd.pipelines import BACKENDS

FASTKD = [sys.executable, "-m", "fastkd"]


def run(*args, cwd=None):
    return subprocess.run(FASTKD + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def run_here(*args):
    """``fastkd ARGS`` in this process (``fastkd.cli.main``, the console script's entry point): the same exit
    code and stderr as :func:`run` without a new interpreter importing torch (~2 s each)."""
    import contextlib
    import io
    import types

    from fastkd.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastkd: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_list_models_shows_every_registered_model_with_parameter_counts():
    result = run("list", "models")
    assert result.returncode == 0
    for name in list_models():
        assert name in result.stdout
    assert "11,689,512" in result.stdout  # ResNet18, 1000 classes: torchvision's count


def test_list_datasets_methods_backends(orl_data):
    listed = run_here("list", "datasets").stdout
    assert all(d in listed for d in DATASETS.names())
    converted = run_here("list", "datasets", "--data", orl_data).stdout
    assert "train" in converted and "320" in converted and "80" in converted
    methods, backends = run_here("list", "methods").stdout, run_here("list", "backends").stdout
    assert all(m in methods for m in list_methods())
    assert all(b in backends for b in BACKENDS.names())


def test_user_errors_are_one_line_with_exit_2(orl_data, tmp_path):
    assert_user_error(run("convert", "--dataset", "imagenet9", "--out", str(tmp_path / "o")), "unknown dataset")
    assert_user_error(run_here("convert", "--dataset", "orl_faces", "--root", str(tmp_path / "missing"),
                               "--out", str(tmp_path / "o")), "does not exist")
    assert_user_error(run_here("convert", "--dataset", "orl_faces", "--root", str(tmp_path),
                               "--out", str(tmp_path) + "-o"), "expected", "s1", "1.pgm")
    assert_user_error(run_here("train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--model",
                               "resnet32"), "not a fastkd conversion")
    base = ["train", "--data", orl_data, "--out", str(tmp_path / "r")]
    assert_user_error(run_here(*base, "--model", "resnet1000"), "unknown model", "resnet32")
    assert_user_error(run_here(*base, "--model", "resnet32", "--method", "magic"), "unknown method")
    assert_user_error(run_here(*base, "--model", "resnet32", "--backend", "tfds"), "unknown backend")
    assert_user_error(run_here(*base, "--model", "resnet32", "--method", "kd"), "--teacher-weights")
    assert_user_error(run_here(*base, "--model", "resnet32", "--no-such-flag"), "--no-such-flag")
    assert_user_error(run_here("eval", "--data", orl_data, "--checkpoint", str(tmp_path / "none.pt")), "does not exist")
    assert_user_error(run_here("bench", "loader", "--data", orl_data, "--references", "tfds-own"),
                      "unknown --references tfds-own", "ffcv-own")
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "r")


def test_convert_train_eval_round_trip(tmp_path):
    data = str(tmp_path / "orl")
    result = run("convert", "--dataset", "orl_faces", "--out", data, "--formats", "dali", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.load(open(os.path.join(data, "manifest.json")))["splits"]["train"]["count"] == 320
    assert_user_error(run("convert", "--dataset", "orl_faces", "--out", data), "--overwrite")
    out = str(tmp_path / "run")
    result = run("train", "--data", data, "--out", out, "--model", "shufflenet_v2_x0_5", "--epochs", "1",
                 "--res", "32", "--workers", "0", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    result = run("eval", "--data", data, "--checkpoint", os.path.join(out, "checkpoint.pt"), "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top1"] == pytest.approx(summary["top1"])
    # a new --out: the finished run in `out` would be refused first (it needs --resume)
    assert_user_error(run("train", "--data", data, "--out", out + "2", "--model", "shufflenet_v2_x0_5", "--backend",
                          "ffcv"), "without ffcv")
    assert not os.path.exists(out + "2")


def test_memory_limit_option(orl_data, tmp_path):
    """--memory-limit sets the memory backend's limit for the command (as FASTKD_MEMORY_LIMIT would)."""
    base = ["train", "--data", orl_data, "--out", str(tmp_path / "r"), "--model", "resnet32", "--backend", "memory",
            "--workers", "0", "--device", "cpu", "--epochs", "1"]
    assert_user_error(run(*base, "--memory-limit", "64K"), "over its limit of 64.0 KiB", "--memory-limit")
    assert_user_error(run(*base, "--memory-limit", "lots"), "--memory-limit", "not a size")
