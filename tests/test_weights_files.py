"""The weights files people have (fastkd/train/weights_files.py, weights.py): .safetensors, .pt/.pth/.bin state
dicts (nested, prefixed), timm hub folders and fastkd checkpoints, loaded without running pickled code; a head of
another class count replaced for --pretrained, refused for a teacher; keys that do not fit named in one line."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from fastkd.errors import UserError
from fastkd.models import create_model
from fastkd.train import tricks
from fastkd.train.schedule import apply_lr
from fastkd.train.weights import build_teacher, load_pretrained, read_weights_file
from fastkd.train.weights_files import read_weights, safetensors_bytes


class Payload:
    """Unpickling this calls os.system("touch MARKER")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def r32():
    """A resnet32 for 10 classes (low-resolution stem), seed 0: its state dict is the reference."""
    torch.manual_seed(0)
    return create_model("resnet32", 10, True).state_dict()


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _one_line_error(fn, *fragments) -> str:
    with pytest.raises(UserError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_every_format_reads_the_same_tensors(r32, tmp_path):
    save_file({f"model.{k}": v for k, v in r32.items()}, tmp_path / "w.safetensors")
    torch.save({f"module.{k}": v for k, v in r32.items()}, tmp_path / "w.pth")
    torch.save({"epoch": 3, "state_dict": {f"module._orig_mod.{k}": v for k, v in r32.items()}}, tmp_path / "t.pt")
    torch.save({"epoch": 3, "state_dict_ema": r32}, tmp_path / "ema.pt")
    torch.save(r32, tmp_path / "pytorch_model.bin")
    stripped = {"w.safetensors": "model.", "w.pth": "module.", "t.pt": "module._orig_mod.", "ema.pt": "",
                "pytorch_model.bin": ""}
    for name, prefix in stripped.items():
        state, info = read_weights(str(tmp_path / name))
        assert _equal(state, r32), name
        assert info.stripped == prefix and not info.fastkd and info.arch is None, (name, info)
    # a prefix only some keys carry is the model's own name, not a wrapper's
    state, info = read_weights(str(tmp_path / "w.safetensors"), safetensors_bytes({"model.a": r32["fc.bias"],
                                                                                   "b": r32["fc.bias"]}, {}))
    assert set(state) == {"model.a", "b"} and info.stripped == ""
    # a state dict loads into the teacher it names by --teacher, prefixes and all
    teacher = build_teacher("resnet32", str(tmp_path / "t.pt"), 10, True)
    assert _equal(teacher.state_dict(), r32) and not teacher.training


def test_fastkd_safetensors_metadata_names_the_architecture(r32, tmp_path):
    path = tmp_path / "model.safetensors"
    meta = {"fastkd_model": "resnet32", "num_classes": 10, "res": 32, "low_res": True, "mean": [0.5] * 3,
            "std": [0.25] * 3}
    path.write_bytes(safetensors_bytes(r32, meta))
    state, info = read_weights(str(path))
    assert _equal(state, r32) and info.fastkd and (info.arch, info.num_classes, info.res, info.low_res) == (
        "resnet32", 10, 32, True) and info.std == [0.25] * 3
    teacher = build_teacher(None, str(path), 10, False)  # stem and architecture from the metadata
    assert teacher.fastkd_name == "resnet32" and teacher.conv1.kernel_size == (3, 3)
    assert _equal(teacher.state_dict(), r32)
    _one_line_error(lambda: build_teacher(None, str(path), 7, True), "predicts 10 classes but the data has 7")
    _one_line_error(lambda: build_teacher("resnet18", str(path), 10, True), "--teacher resnet18 but", "holds a resnet32")


def test_hub_folder_and_the_bytes_a_cache_hashes(tmp_path):
    torch.manual_seed(1)
    ref = create_model("resnet18", 10, False).state_dict()
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file(ref, folder / "model.safetensors")
    config = {"architecture": "resnet18", "num_classes": 10,
              "pretrained_cfg": {"input_size": [3, 160, 160], "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}
    (folder / "config.json").write_text(json.dumps(config))
    state, info = read_weights(str(folder))
    assert _equal(state, ref)
    assert (info.arch, info.num_classes, info.res, info.mean) == ("timm:resnet18", 10, 160, [0.4] * 3)
    assert info.kind == "safetensors in a folder"
    # the bytes read once hold both files: the teacher loads from them, with the folder gone
    data = read_weights_file(str(folder))
    assert (folder / "model.safetensors").read_bytes() in data and (folder / "config.json").read_bytes() in data
    config["pretrained_cfg"]["input_size"] = [3, 224, 224]
    (folder / "config.json").write_text(json.dumps(config))
    assert hashlib.sha256(read_weights_file(str(folder))).digest() != hashlib.sha256(data).digest()
    shutil.rmtree(folder)
    teacher = build_teacher("resnet18", str(folder), 10, False, data=data)
    assert _equal(teacher.state_dict(), ref)
    # pytorch_model.bin, without config.json: still a weights folder
    other = tmp_path / "bin"
    other.mkdir()
    torch.save(ref, other / "pytorch_model.bin")
    state, info = read_weights(str(other))
    assert _equal(state, ref) and info.kind == "state dict in a folder" and info.arch is None


def test_inputs_that_are_not_weights_are_one_line_errors(r32, tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {"fc.bias": Payload(marker)}}, tmp_path / "evil.pth")
    _one_line_error(lambda: read_weights(str(tmp_path / "evil.pth")), "holds Python objects besides tensors")
    assert not marker.exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    _one_line_error(lambda: read_weights(str(tmp_path / "empty")), "holds no model.safetensors or pytorch_model.bin")
    good = safetensors_bytes(r32, {})
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    _one_line_error(lambda: read_weights(str(tmp_path / "cut.safetensors")), "is not a valid .safetensors file")
    (tmp_path / "photo.pt").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a JPEG named .pt
    _one_line_error(lambda: read_weights(str(tmp_path / "photo.pt")), "is not a weights file", ".safetensors")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "notes.pt")
    _one_line_error(lambda: read_weights(str(tmp_path / "notes.pt")), "neither a fastkd checkpoint nor a state dict")
    _one_line_error(lambda: read_weights(str(tmp_path / "nowhere.pt")), "do not exist")
    bad_config = tmp_path / "badcfg"
    bad_config.mkdir()
    save_file(r32, bad_config / "model.safetensors")
    (bad_config / "config.json").write_text("{not json")
    _one_line_error(lambda: read_weights(str(bad_config)), "config.json is not valid JSON")


def test_keys_that_do_not_fit_are_named(r32, tmp_path):
    state = dict(r32)
    del state["layer1.0.bn1.weight"]
    state.update({"extra.a": torch.ones(1), "extra.b": torch.ones(1), "layer2.0.conv1.weight": torch.ones(3, 3)})
    torch.save(state, tmp_path / "w.pt")
    msg = _one_line_error(lambda: load_pretrained(create_model("resnet32", 10, True), str(tmp_path / "w.pt"), 10),
                          "does not fit the student resnet32", "4 keys do not fit", "missing 'layer1.0.bn1.weight'",
                          "unexpected 'extra.a'")
    assert "extra.b" in msg and "layer2.0.conv1.weight" not in msg  # three named, then "..."
    _one_line_error(lambda: build_teacher("resnet32", str(tmp_path / "w.pt"), 10, True), "does not fit the teacher")
    _one_line_error(lambda: load_pretrained(create_model("squeezenet1_1", 10, True), str(tmp_path / "w.pt"), 10),
                    "no tensor fits the student squeezenet1_1")


def test_pretrained_replaces_a_head_of_another_class_count(tmp_path):
    torch.manual_seed(2)
    src = create_model("resnet32", 100, False)  # "ImageNet-style" stem, 100 classes
    save_file({f"model.{k}": v for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    torch.manual_seed(3)
    dst = create_model("resnet32", 10, True)  # low-resolution stem, 10 classes
    init_fc = dst.fc.weight.clone()
    fit = load_pretrained(dst, str(tmp_path / "w.safetensors"), 10)
    assert (fit.head, fit.head_classes, fit.head_module, fit.stem) == (["fc.weight", "fc.bias"], 100, "fc",
                                                                      ["conv1.weight"])
    assert torch.equal(dst.fc.weight, init_fc)
    assert torch.equal(dst.layer3[4].conv2.weight, src.layer3[4].conv2.weight)
    assert torch.equal(dst.bn1.running_var, src.bn1.running_var)
    assert tricks.load_pretrained(create_model("resnet32", 10, True), str(tmp_path / "w.safetensors")) == [
        "conv1.weight", "fc.bias", "fc.weight"]
    # a teacher must predict the data's classes
    _one_line_error(lambda: build_teacher("resnet32", str(tmp_path / "w.safetensors"), 10, False),
                    "predicts 100 classes (classifier fc) but the data has 10", "--pretrained")


def test_body_lr_scale_groups(r32):
    model = create_model("resnet32", 10, True)
    extra = [torch.nn.Parameter(torch.zeros(4, 4))]  # a method's adapter: new, trained at --lr
    groups = tricks.param_groups(model, extra, 5e-4, True, head=("fc.weight", "fc.bias"), body_lr_scale=0.1)
    head = {id(model.fc.weight), id(model.fc.bias), id(extra[0])}
    assert [(g["lr_scale"], g["weight_decay"]) for g in groups] == [(1.0, 5e-4), (1.0, 0.0), (0.1, 5e-4), (0.1, 0.0)]
    assert {id(p) for g in groups[:2] for p in g["params"]} == head
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 1
    opt = torch.optim.SGD(groups, lr=1.0)
    apply_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.2, 0.02, 0.02])
    # no head replaced: every model parameter is the body
    groups = tricks.param_groups(model, [], 5e-4, False, head=(), body_lr_scale=0.1)
    assert [g["lr_scale"] for g in groups] == [0.1] and len(groups[0]["params"]) == len(list(model.parameters()))
    assert [g["lr_scale"] for g in tricks.param_groups(model, [], 5e-4, False)] == [1.0]


def test_timm_hub_folder_as_teacher_and_as_pretrained(tmp_path):
    """A timm hub folder names its architecture (config.json): a teacher needs no --teacher; --pretrained
    replaces its 1000-class head (head.fc) for this dataset's classes."""
    torch.manual_seed(4)
    ref = create_model("timm:test_convnext", 1000, False, res=64).state_dict()
    folder = tmp_path / "test_convnext.in1k"
    folder.mkdir()
    save_file(ref, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "test_convnext", "num_classes": 1000}))
    teacher = build_teacher(None, str(folder), 1000, False, res=64)
    assert teacher.fastkd_name == "timm:test_convnext" and _equal(teacher.state_dict(), ref)
    _one_line_error(lambda: build_teacher(None, str(folder), 10, False, res=64),
                    "predicts 1000 classes (classifier head.fc) but the data has 10")
    student = create_model("timm:test_convnext", 10, False, res=64)
    fit = load_pretrained(student, str(folder), 10)
    assert (fit.head, fit.head_classes, fit.stem) == (["head.fc.weight", "head.fc.bias"], 1000, [])
    own = student.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ref.items() if not k.startswith("head.fc."))


def test_body_lr_scale_without_a_new_head_is_said(r32, tmp_path, capsys):
    from fastkd.train.build import build_student
    from fastkd.train.config import TrainConfig

    save_file(r32, tmp_path / "same.safetensors")  # as many classes as the data: nothing replaced
    cfg = TrainConfig(data="unused", out="", student="resnet32", pretrained=str(tmp_path / "same.safetensors"),
                      body_lr_scale=0.1)
    student = build_student(cfg, 10, True, torch.device("cpu"))
    assert student.fastkd_new_head == () and _equal(student.state_dict(), r32)
    err = capsys.readouterr().err.splitlines()
    assert err == ["--body-lr-scale 0.1: no head was replaced, so every student parameter trains at 0.1 x --lr"]
