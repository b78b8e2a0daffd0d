"""Names read from JSON files (run summaries, grid specs, manifests, recipes) that become paths stay inside their
folder (issue 19, point 4): a name that is a path is a one-line error naming the file and the name, and nothing is
read or written outside."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from fastkd.errors import UserError
from cli_errors import assert_one_line_error, run_cli


def _summary(folder, **fields):
    os.makedirs(folder, exist_ok=True)
    summary = {"student": "resnet8", "teacher": "resnet20", "method": "kd", "seed": 0, "top1": 50.0, **fields}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"epoch": 0, "test_top1": 40.0}) + "\n")


def _pngs(root):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.endswith(".png"))


@pytest.mark.parametrize("field,value", [("teacher", "../../../../x"), ("student", "/tmp/x"),
                                         ("method", "kd/../../x"), ("teacher", "..")])
def test_report_refuses_run_names_that_are_paths(tmp_path, field, value):
    from fastkd.experiments.report import write_report

    root = tmp_path / "a" / "b" / "c" / "grid"
    _summary(str(root / "run0"), **{field: value})
    with pytest.raises(UserError) as info:
        write_report(str(root), quiet=True)
    assert str(root / "run0" / "summary.json") in str(info.value) and repr(value) in str(info.value)
    assert "\n" not in str(info.value)
    assert _pngs(tmp_path) == []


def test_report_refuses_a_grid_spec_naming_a_path(tmp_path):
    from fastkd.experiments.report import write_report

    root = tmp_path / "grid"
    _summary(str(root / "run0"))
    (root / "grid-spec.json").write_text(json.dumps({"student": "resnet8", "teachers": ["../x"], "methods": ["kd"]}))
    with pytest.raises(UserError, match=r"grid-spec.json: teacher '../x' is not a plain name"):
        write_report(str(root), quiet=True)


def test_report_cli_is_one_line_and_writes_nothing_outside(tmp_path):
    root = tmp_path / "a" / "b" / "grid"
    _summary(str(root / "run0"), teacher="../../../../x")
    assert_one_line_error(run_cli("report", str(root)), "teacher '../../../../x' is not a plain name")
    assert _pngs(tmp_path) == []


def _manifest(root, **fields):
    from fastkd.converted import FORMAT, FORMAT_VERSION, MANIFEST

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, "format_version": FORMAT_VERSION, "checksums": {}, "sizes": {}, **fields}, f)


@pytest.mark.parametrize("rel", ["../secret.txt", "/etc/hostname", "dali/../../secret.txt", "dali//x",
                                 "..\\secret.txt"])
def test_verify_and_eval_never_touch_files_outside_the_conversion(tmp_path, rel):
    from fastkd.converted import verify
    from fastkd.pipelines import open_converted

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"hello")
    root = tmp_path / "data"
    _manifest(str(root), checksums={rel: hashlib.sha256(b"hello").hexdigest()}, sizes={rel: 5})
    for call in (lambda: verify(str(root), progress=False), lambda: open_converted(str(root))):
        with pytest.raises(UserError) as info:
            call()
        assert repr(rel) in str(info.value) and "manifest.json" in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("splits", [
    {"../up": {"count": 0}},
    {"train": {"count": 0, "dali": {"shards": ["dali/train/../../../x.tar"], "samples": "dali/train/samples.npy"}}},
    {"train": {"count": 0, "dali": {"shards": [], "samples": "/etc/passwd"}}},
    {"train": {"count": 0, "dali": {"shards": []}, "ffcv": "../x.beton"}},
])
def test_manifest_file_lists_stay_inside_the_conversion(tmp_path, splits):
    from fastkd.pipelines import open_converted

    _manifest(str(tmp_path / "data"), splits=splits)
    with pytest.raises(UserError, match="is not a"):
        open_converted(str(tmp_path / "data"))


def test_verify_cli_is_one_line(tmp_path):
    (tmp_path / "secret.txt").write_bytes(b"hello")
    _manifest(str(tmp_path / "data"), checksums={"../secret.txt": hashlib.sha256(b"hello").hexdigest()},
              sizes={"../secret.txt": 5})
    assert_one_line_error(run_cli("verify", "--quiet", str(tmp_path / "data")), "'../secret.txt'")


@pytest.mark.parametrize("field,value,fragment", [
    ("teachers", ["../../x"], "teacher '../../x' is not a plain name"),
    ("student", "a/b", "student 'a/b' is not a plain name"),
    ("methods", ["kd", "/abs"], "method '/abs' is not a plain name"),
    ("seeds", [0, "../x"], "seed '../x' is not an integer"),
    ("teachers", "resnet56", "teachers must be a JSON list"),
])
def test_recipes_name_no_paths(tmp_path, field, value, fragment):
    from fastkd.recipes import load_recipe

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"teachers": ["resnet56"], "student": "resnet20", "methods": ["kd"], "seeds": [0],
                                field: value}))
    with pytest.raises(UserError, match=f"recipe {path}: .*{fragment}".replace("(", r"\(").replace(")", r"\)")):
        load_recipe(str(path))
    for name in ("cifar100-seed", "crd-cifar100"):  # the shipped ones pass
        load_recipe(name)
