"""Fine-tuning a pretrained network on a target set, one command:
`fastkd train --pretrained W --body-lr-scale 0.1 --warmup-epochs 1` on a miniature high-resolution layout
(Stanford Dogs), the run's model.safetensors used as a teacher with no --teacher, and the README's whole workflow (zoo
teacher fine-tuned from a hub folder -> cache -> zoo student -> ONNX export -> eval of the export)."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import scipy.io
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastkd.cli import main
from fastkd.models import create_model
from fastkd.train.build import build_student
from fastkd.train.config import TrainConfig
from layout_tools import make_image, write_image
from run_tools import fastkd_cli as _fastkd

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu"]


def _mat_list(path, files, labels):
    cell = np.empty((len(files), 1), dtype=object)
    cell[:, 0] = files
    scipy.io.savemat(path, {"file_list": cell, "annotation_list": cell, "labels": np.asarray(labels, float)[:, None]})


@pytest.fixture(scope="module")
def dogs(tmp_path_factory):
    """A converted miniature Stanford Dogs: 3 breeds, 3 train / 2 test photos each, ~100x90 pixels."""
    root = tmp_path_factory.mktemp("dogs") / "stanford_dogs"
    lists = {"train": [], "test": []}
    for k, folder in enumerate(BREEDS):
        for i in range(5):
            rel = f"{folder}/{folder[:9]}_{i}.jpg"
            write_image(str(root / "Images" / rel), make_image(10 * k + i, 96 + i, 88 + k))
            lists["train" if i < 3 else "test"].append((rel, k + 1))
    os.makedirs(root / "lists")
    for split, entries in lists.items():
        _mat_list(root / "lists" / f"{split}_list.mat", *zip(*entries))
    _mat_list(root / "lists" / "file_list.mat", *zip(*(lists["train"] + lists["test"])))
    out = str(root.parent / "data")
    code, err = _fastkd("convert", "--dataset", "stanford_dogs", "--root", str(root), "--out", out, "--formats", "dali",
                        "--workers", "1", "--quiet")
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    """A random-init shufflenet_v2_x0_5 for 1000 classes saved as .safetensors with a wrapper's ``model.`` prefix."""
    torch.manual_seed(7)
    state = create_model("shufflenet_v2_x0_5", 1000, False).state_dict()
    path = tmp_path_factory.mktemp("w") / "shufflenet-in1k.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()}, str(path))
    return str(path), state


def _finetune(dogs, path, run, *more):
    """The fine-tuning command: the pretrained body at 0.1 x --lr, the new head at --lr, 1 warm-up epoch."""
    return _fastkd("train", "--data", dogs, "--out", run, "--student", "shufflenet_v2_x0_5", "--pretrained", path,
                   "--body-lr-scale", "0.1", "--warmup-epochs", "1", "--epochs", "2", "--res", "72", "--lr", "0.1",
                   "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet", *more)


@pytest.fixture(scope="module")
def finetuned(dogs, imagenet_weights, tmp_path_factory):
    """(run folder, stderr) of the one fine-tuning command, 2 epochs."""
    run = str(tmp_path_factory.mktemp("ft") / "run")
    code, err = _finetune(dogs, imagenet_weights[0], run)
    assert code == 0, err
    return run, err


def test_fine_tune_with_a_new_head(dogs, imagenet_weights, finetuned, tmp_path):
    path, src = imagenet_weights
    # at step 0 the body holds the file's weights, the 3-class head its own initialisation
    cfg = TrainConfig(data=dogs, out="", student="shufflenet_v2_x0_5", pretrained=path, body_lr_scale=0.1)
    student = build_student(cfg, 3, False, torch.device("cpu"), report=False)
    own = student.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items() if not k.startswith("fc."))
    assert student.fc.weight.shape == (3, 1024) and student.fastkd_new_head == ("fc.weight", "fc.bias")

    run, err = finetuned
    lines = err.splitlines()
    assert f"--pretrained {path}: classifier fc (1000 classes) replaced by a new 3-class head" in lines
    assert sum("replaced by a new" in line for line in lines) == 1
    assert "--body-lr-scale 0.1: the pretrained body trains at 0.1 x --lr, the new head fc at --lr" in lines
    state = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    # 9 images / batch 4 = 2 steps an epoch; the last at epoch 1.5: half-way down the cosine after 1 warm-up epoch
    lr = 0.1 * 0.5 * (1 + np.cos(np.pi * 0.5))
    assert [(g["lr_scale"], len(g["params"])) for g in groups] == [(1.0, 2), (0.1, len(list(student.parameters())) - 2)]
    assert [g["lr"] for g in groups] == pytest.approx([lr, 0.1 * lr], rel=1e-9)
    # it trained: the body moved from the file, the head from its init; model.safetensors is the checkpoint's model
    weights = load_file(os.path.join(run, "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in state["model"].items())
    assert not torch.equal(weights["conv5.0.weight"], src["conv5.0.weight"])
    assert not torch.equal(weights["fc.weight"], own["fc.weight"])
    with safe_open(os.path.join(run, "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta.pop("format") == "pt" and meta.pop("fastkd_model") == "shufflenet_v2_x0_5"
    assert {k: json.loads(v) for k, v in meta.items()} == {"num_classes": 3, "res": 72, "low_res": False,
                                                          "mean": state["mean"], "std": state["std"]}

    # the fine-tuned model.safetensors is a teacher with no --teacher, through a teacher cache (hashed bytes)
    kd = str(tmp_path / "kd")
    code, err = _fastkd("train", "--data", dogs, "--out", kd, "--student", "resnet32", "--method", "kd",
                        "--teacher-weights", os.path.join(run, "model.safetensors"), "--teacher-cache",
                        str(tmp_path / "cache"), "--epochs", "1", "--res", "72", "--batch-size", "4", "--workers", "0",
                        "--device", "cpu", "--quiet")
    assert code == 0, err
    summary = json.load(open(os.path.join(kd, "summary.json")))
    assert summary["teacher"] == "shufflenet_v2_x0_5" and summary["teacher_source"] == "filling"


def test_fine_tune_resumes_exactly(dogs, imagenet_weights, finetuned, tmp_path, monkeypatch):
    """Killed after its first epoch's checkpoint, the run resumes with each group's lr scale: same weights."""
    from fastkd.train import checkpoint

    real_save = checkpoint.save_atomic

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_die)
    run = str(tmp_path / "r")
    assert _finetune(dogs, imagenet_weights[0], run)[0] == 130
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert os.path.isfile(os.path.join(run, "checkpoint.pt"))
    code, err = _finetune(dogs, imagenet_weights[0], run, "--resume")
    assert code == 0, err
    a = load_file(os.path.join(finetuned[0], "model.safetensors"))
    b = load_file(os.path.join(run, "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_errors_are_one_line(dogs, imagenet_weights, tmp_path):
    path, _ = imagenet_weights
    base = ["train", "--data", dogs, "--student", "shufflenet_v2_x0_5", "--res", "72", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--device", "cpu", "--quiet"]
    (tmp_path / "empty").mkdir()
    cases = {
        "folder": (["--pretrained", str(tmp_path / "empty")], "holds no model.safetensors or pytorch_model.bin"),
        "teacher head": (["--method", "kd", "--teacher-weights", path, "--teacher", "shufflenet_v2_x0_5"],
                         "predicts 1000 classes (classifier fc) but the data has 3"),
        "other architecture": (["--pretrained", path, "--student", "shufflenet_v2_x1_0"], "does not fit the student shufflenet_v2_x1_0"),
        "scale without weights": (["--body-lr-scale", "0.1"], "--pretrained"),
    }
    for name, (extra, fragment) in cases.items():
        code, err = _fastkd(*base, "--out", str(tmp_path / name.replace(" ", "_")), *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("fastkd: error: "), (name, err)
        assert fragment in lines[0], (name, lines[0])


def test_the_readme_workflow_zoo_teacher_to_exported_student(dogs, tmp_path):
    """README's workflow, end to end on the miniature Dogs: fine-tune a timm teacher from a local timm/Hugging
    Face folder (1000-class head replaced), fill the cache from its model.safetensors, distil into a torchvision
    student reading the cache, export the student to ONNX and evaluate the exported file like the checkpoint."""
    torch.manual_seed(3)
    hub = tmp_path / "test_convnext.in1k"
    os.makedirs(hub)
    save_file(create_model("timm:test_convnext", 1000, False, res=72).state_dict(), str(hub / "model.safetensors"))
    (hub / "config.json").write_text(json.dumps({"architecture": "test_convnext", "num_classes": 1000}))
    common = ["--data", dogs, "--res", "72", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
              "--quiet"]
    teacher = str(tmp_path / "teacher")
    code, err = _fastkd("train", "--out", teacher, "--model", "timm:test_convnext", "--pretrained", str(hub),
                        "--body-lr-scale", "0.1", "--warmup-epochs", "1", "--lr", "0.01", *common)
    assert code == 0 and "(1000 classes) replaced by a new 3-class head" in err, err
    weights = os.path.join(teacher, "model.safetensors")
    code, err = _fastkd("cache", "build", "--teacher-weights", weights, "--out", str(tmp_path / "cache"),
                        "--method", "kd", *common)
    assert code == 0, err
    kd = str(tmp_path / "kd")
    code, err = _fastkd("train", "--out", kd, "--student", "torchvision:mobilenet_v3_small", "--method", "kd",
                        "--teacher-weights", weights, "--teacher-cache", str(tmp_path / "cache"), *common)
    assert code == 0, err
    summary = json.load(open(os.path.join(kd, "summary.json")))
    assert (summary["teacher"], summary["teacher_source"]) == ("timm:test_convnext", "cached")
    onnx = os.path.join(kd, "student.onnx")
    code, err = _fastkd("export", "--checkpoint", os.path.join(kd, "checkpoint.pt"), "--format", "onnx", "--out", onnx)
    assert code == 0 and os.path.isfile(onnx + ".json"), err
    results = []
    for path in (os.path.join(kd, "checkpoint.pt"), onnx):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["eval", "--data", dogs, "--checkpoint", path, "--workers", "0", "--device", "cpu"])
        results.append(json.loads(out.getvalue()))
    assert [(r["top1"], r["top5"], r["count"]) for r in results] == [(results[0]["top1"], results[0]["top5"], 6)] * 2
