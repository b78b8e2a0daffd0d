"""`fastkd export`: each format checked against the PyTorch model on real evaluation views, its description
beside it, `fastkd eval` of the exported file equal to eval of the checkpoint, and nothing written when refused."""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import types

import pytest
import torch

from fastkd import __version__
from fastkd.hashing import sha256_file
from fastkd.models import create_model
from fastkd.pipelines import open_converted
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig

FORMATS = {"safetensors": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}
CHECK = ["--batch-size", "8"]  # the check's batch: small, and another size than the traced one (2)


def run_here(*args):
    """``fastkd ARGS`` in this process: exit code, stdout, stderr."""
    from fastkd.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_user_error(result, *fragments):
    """Exit code 2 and the error in one line (after any progress lines), no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fastkd: error: "), result.stderr
    for fragment in fragments:
        assert fragment in last


def make_checkpoint(data: str, path, name: str, low_res: bool = True, res: int = 32, seed: int = 0, **config):
    """A checkpoint as the trainer writes it, of a randomly initialised network whose classifier is scaled so
    that its logits have a trained network's size (the largest about 10, not ~0)."""
    torch.manual_seed(seed)
    model = create_model(name, 40, low_res, res=res).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        scale = 10 / model(torch.randn(4, 3, res, res)).abs().max()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    converted = open_converted(data)
    cfg = TrainConfig(data=data, out=os.path.dirname(str(path)), student=name, res=res, **config)
    checkpoint.save_atomic(str(path), {
        "kind": checkpoint.KIND, "fastkd_version": __version__, "epoch": 0, "model_name": model.fastkd_name,
        "num_classes": 40, "dataset": converted.manifest["dataset"], "low_res": low_res, "res": res,
        "mean": converted.mean, "std": converted.std, "classes": converted.classes, "model": model.state_dict(),
        "config": cfg.to_dict()})
    return str(path)


def evaluate(data, path):
    result = run_here("eval", "--data", data, "--checkpoint", path, "--workers", "0", "--device", "cpu",
                      "--batch-size", "40")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run_dir(orl_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(orl_data, folder / "checkpoint.pt", "shufflenet_v2_x0_5")
    return folder, ckpt, evaluate(orl_data, ckpt)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_is_checked_described_and_evaluates_like_the_checkpoint(orl_data, run_dir, fmt):
    folder, ckpt, reference = run_dir
    out = str(folder / FORMATS[fmt])
    result = run_here("export", "--checkpoint", ckpt, "--format", fmt, "--out", out, *CHECK)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["out"] == out and summary["sidecar"] == out + ".json"
    assert summary["max_abs_diff"] < 1e-4 and summary["top1_agreement"] == 1.0
    steps = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("export: ")]
    assert steps == ["building", "exporting", "checking:", "wrote"] and "max abs diff" in result.stderr
    side = json.load(open(out + ".json"))
    data = open_converted(orl_data)
    assert side["format"] == fmt and side["model_name"] == "shufflenet_v2_x0_5" and side["num_classes"] == 40
    assert side["classes"] == data.classes and side["res"] == 32 and side["low_res"] is True
    assert side["input"]["shape"] == ["N", 3, 32, 32] and side["input"]["layout"] == "NCHW"
    assert side["normalisation"]["mean"] == data.mean and side["normalisation"]["std"] == data.std
    assert "(pixel / 255 - mean) / std" in side["normalisation"]["formula"]
    assert side["checkpoint"] == {"path": os.path.abspath(ckpt), "sha256": sha256_file(ckpt)}
    assert side["sha256"] == sha256_file(out) and side["fastkd_version"] == __version__
    check = side["check"]
    assert check["batch_size"] == 8 and check["split"] == "test" and check["max_abs_diff"] == summary["max_abs_diff"]
    assert check["max_abs_logit"] > 3.0  # the comparison is of logits of a real size, not of ~0
    # the file runs without fastkd's help, on another batch size than the check's
    x = torch.randn(3, 3, 32, 32)
    got = _run_plain(fmt, out, side, x)
    want = create_and_load(ckpt)(x)
    assert got.shape == (3, 40) and (got - want).abs().max().item() < 1e-4
    # and `fastkd eval` takes it: the same numbers as the checkpoint's
    evaluated = evaluate(orl_data, out)
    assert evaluated["format"] == fmt and evaluated["model"] == reference["model"]
    for key in ("top1", "top5", "count", "split"):
        assert evaluated[key] == reference[key], key
    assert evaluated["loss"] == pytest.approx(reference["loss"], abs=1e-5)


def create_and_load(ckpt):
    state = checkpoint.load(ckpt)
    model = create_model(state["model_name"], state["num_classes"], state["low_res"], res=state["res"])
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)


def _run_plain(fmt, path, side, x):
    with torch.no_grad():
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            return torch.from_numpy(session.run(None, {side["input"]["name"]: x.numpy()})[0])
        if fmt == "torchscript":
            return torch.jit.load(path)(x)
        from safetensors.torch import load_file

        model = create_model(side["model_name"], side["num_classes"], side["low_res"], res=side["res"])
        model.load_state_dict(load_file(path))
        return model.eval()(x)


def test_a_refused_check_writes_nothing(orl_data, run_dir, tmp_path, monkeypatch):
    import fastkd.export.exporter as exporter

    real = exporter.load_exported

    def off_by_a_little(*args, **kwargs):  # an export whose logits are 1e-3 off
        model = real(*args, **kwargs)
        return lambda x: model(x) + 1e-3

    monkeypatch.setattr(exporter, "load_exported", off_by_a_little)
    out = tmp_path / "sub" / "model.safetensors"
    result = run_here("export", "--checkpoint", run_dir[1], "--format", "safetensors", "--out", out, *CHECK)
    assert_user_error(result, "differ", "0.001", "--atol 0.0001", "nothing written")
    assert not os.path.exists(tmp_path / "sub")
    # a looser --atol accepts the same export
    result = run_here("export", "--checkpoint", run_dir[1], "--format", "safetensors", "--out", out, "--atol", "0.01",
                      *CHECK)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "sub")) == ["model.safetensors", "model.safetensors.json"]  # no temp file


def test_user_errors(orl_data, run_dir, tmp_path, monkeypatch):
    ckpt, out = run_dir[1], tmp_path / "m.onnx"
    assert_user_error(run_here("export", "--checkpoint", ckpt, "--format", "tflite", "--out", out), "tflite",
                      "safetensors")
    assert_user_error(run_here("export", "--checkpoint", tmp_path / "none.pt", "--format", "onnx", "--out", out),
                      "does not exist")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    assert_user_error(run_here("export", "--checkpoint", tmp_path / "state.pt", "--format", "onnx", "--out", out),
                      "not a fastkd checkpoint")
    state = checkpoint.load(ckpt)
    state["config"]["data"] = str(tmp_path / "deleted-data")
    gone = str(tmp_path / "gone.pt")
    checkpoint.save_atomic(gone, state)
    out = tmp_path / "m.safetensors"
    assert_user_error(run_here("export", "--checkpoint", gone, "--format", "safetensors", "--out", out), "is gone",
                      "--data")
    assert run_here("export", "--checkpoint", gone, "--format", "safetensors", "--out", out, "--data", orl_data,
                    *CHECK).returncode == 0
    assert_user_error(run_here("export", "--checkpoint", gone, "--format", "safetensors", "--out", out), "--overwrite")
    assert_user_error(run_here("export", "--checkpoint", gone, "--format", "safetensors", "--out", gone,
                               "--overwrite"), "the checkpoint itself")
    # the ONNX packages are optional: their absence is one line naming the extra
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert_user_error(run_here("export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "x.onnx"),
                      "onnxruntime", "pip install 'fastkd[export]'")
    assert not os.path.exists(tmp_path / "x.onnx")


def test_eval_knows_an_export_by_its_contents_and_refuses_a_stale_description(orl_data, tmp_path):
    from fastkd.export.formats import serialise
    from fastkd.export.recognise import find_export

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    meta = {"kind": "fastkd-export", "format": "torchscript", "model_name": "resnet32", "num_classes": 4,
            "low_res": True, "res": 8}
    out = str(tmp_path / "alone.pt")
    open(out, "wb").write(serialise("torchscript", model, torch.zeros(2, 3, 8, 8), meta)[0])
    found = find_export(out)  # no alone.pt.json: a fastkd TorchScript file carries its description inside
    assert found.format == "torchscript" and found.meta == meta
    assert find_export(str(tmp_path / "missing.pt")) is None
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pt")
    assert find_export(str(tmp_path / "state.pt")) is None  # torch.save's zip: a checkpoint's way
    open(out + ".json", "w").write(json.dumps({**meta, "sha256": "0" * 64}))  # describes another file
    assert_user_error(run_here("eval", "--data", orl_data, "--checkpoint", out, "--workers", "0"), "sha256",
                      "export the checkpoint again")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 8, 8)), plain)
    assert_user_error(run_here("eval", "--data", orl_data, "--checkpoint", plain, "--workers", "0"),
                      "not written by `fastkd export`")


@pytest.mark.parametrize("name", ["torchvision:mobilenet_v3_small", "timm:vit_tiny_patch16_224"])
def test_zoo_models_export_to_onnx(orl_data, tmp_path, name):
    pytest.importorskip(name.split(":")[0])
    ckpt = make_checkpoint(orl_data, tmp_path / "checkpoint.pt", name, low_res=False, res=32)
    out = str(tmp_path / "model.onnx")
    result = run_here("export", "--checkpoint", ckpt, "--format", "onnx", "--out", out, *CHECK)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["max_abs_diff"] < 1e-4 and summary["model"] == name
    side = json.load(open(out + ".json"))
    assert side["model_name"] == name and side["input"]["shape"] == ["N", 3, 32, 32]
    evaluated, reference = evaluate(orl_data, out), evaluate(orl_data, ckpt)
    assert evaluated["model"] == name and evaluated["count"] == 80
    assert (evaluated["top1"], evaluated["top5"]) == (reference["top1"], reference["top5"])
    if name.startswith("timm:vit"):  # its input size is fixed when built: another --res is refused in one line
        assert_user_error(run_here("export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "r.onnx",
                                   "--res", "64"), "cannot run on 64x64", "--res 32")
