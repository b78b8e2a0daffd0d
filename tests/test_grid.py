"""``fastkd grid`` / ``fastkd report``: a 2 teachers x 3 methods x 2 seeds grid on the embedded ORL faces,
interrupted inside a cell and resumed; its table, CSV and plots; teachers brought as weights; recipes.

The grid trains on ORL's 80-image test split for 2 epochs (it tests the grid's bookkeeping, not accuracy).
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import torch

from fastkd.cli import main
from fastkd.errors import UserError
from fastkd.experiments.grid import GridSpec, run_grid
from fastkd.recipes import load_recipe, recipe_names

TRAIN = dict(epochs=2, batch_size=40, lr=0.05, res=32, workers=0, device="cpu", train_split="test")
TEACHERS, STUDENT, METHODS, SEEDS = ["resnet32", "squeezenet1_1"], "shufflenet_v2_x0_5", ["kd", "at", "rkd"], [0, 1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread: on the shared, loaded 2-core machine two threads' OpenMP
    synchronisation made a 2-epoch cell ~10x slower. The numbers checked here do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spec(data, out, **kw):
    base = dict(teachers=TEACHERS, student=STUDENT, methods=METHODS, seeds=SEEDS, train=dict(TRAIN))
    return GridSpec(data=data, out=str(out), **{**base, **kw})


def _summaries(root):
    return sorted(os.path.relpath(d, root) for d, _, files in os.walk(root) if "summary.json" in files)


@pytest.fixture(scope="module")
def stopped_and_resumed(orl_data, tmp_path_factory):
    """The grid stopped by a KeyboardInterrupt after the first epoch of its first distilled cell, then the
    same grid run again; returns (out, first epoch row of the stopped cell, calls of the second run)."""
    import fastkd.experiments.runs as runs
    from fastkd.train.trainer import Trainer

    out = tmp_path_factory.mktemp("grid") / "g"
    mp = pytest.MonkeyPatch()
    real_write, writes = Trainer._write_metrics, []

    def write_then_stop(self):  # 2 teachers + 2 student baselines x 2 epochs = 8 writes, then kd seed 0
        real_write(self)
        writes.append(self.cfg.out)
        if len(writes) == 9:
            raise KeyboardInterrupt
    mp.setattr(Trainer, "_write_metrics", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_grid(_spec(orl_data, out), progress=False, one_pass=False)  # cell by cell (one pass: test below)
    mp.undo()
    stopped = os.path.join(str(out), "resnet32", "kd", "seed0")
    assert writes[-1] == stopped and not os.path.exists(os.path.join(stopped, "summary.json"))
    assert len(_summaries(out)) == 4  # the teachers and the student baselines
    first_row = open(os.path.join(stopped, "metrics.jsonl")).readline().rstrip("\n")

    real_train, calls = runs.train, []

    def record(cfg, resume=False):
        calls.append((os.path.relpath(cfg.out, str(out)), resume))
        return real_train(cfg, resume=resume)
    mp.setattr(runs, "train", record)
    run_grid(_spec(orl_data, out), progress=False, one_pass=False)
    mp.undo()
    return out, first_row, calls


def test_stopped_grid_resumes_the_stopped_cell_and_skips_finished_ones(stopped_and_resumed, orl_data, tmp_path):
    out, first_row, calls = stopped_and_resumed
    cells = [f"{t}/{m}/seed{s}" for t in TEACHERS for s in SEEDS for m in METHODS]  # row by row: (teacher, seed)
    assert calls == [(c, c == "resnet32/kd/seed0") for c in cells]  # nothing finished was trained again
    stopped = os.path.join(str(out), "resnet32", "kd", "seed0")
    rows = open(os.path.join(stopped, "metrics.jsonl")).read().splitlines()
    assert rows[0] == first_row and len(rows) == 2  # continued from its epoch-1 checkpoint
    # the resumed cell ends where an uninterrupted run of the same cell ends
    cfg = json.load(open(os.path.join(stopped, "config.json")))
    from fastkd.train.config import TrainConfig
    from fastkd.train.trainer import train

    straight = train(TrainConfig(**{**cfg, "out": str(tmp_path / "straight"), "progress": False}))
    assert straight["top1"] == json.load(open(os.path.join(stopped, "summary.json")))["top1"]


def test_one_pass_rows_end_with_the_weights_of_the_cells_trained_one_by_one(stopped_and_resumed, orl_data, tmp_path,
                                                                           capsys):
    """The first teacher's method cells again, from its weights, in one pass per (teacher, seed) row: each cell's
    weights equal those of the grid above, which trained them one after another (one of them stopped and resumed)."""
    out, _, _ = stopped_and_resumed
    teacher = str(out / "teachers" / "resnet32" / "checkpoint.pt")
    again = tmp_path / "g"
    run_grid(_spec(orl_data, again, teachers=TEACHERS[:1], teacher_weights={"resnet32": teacher}), progress=False)
    assert capsys.readouterr().err.count("one pass over the data for 3 cells") == len(SEEDS)
    for m in METHODS:
        for s in SEEDS:
            a, b = (torch.load(root / "resnet32" / m / f"seed{s}" / "checkpoint.pt") for root in (out, again))
            assert a["model"].keys() == b["model"].keys()
            assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), (m, s)


def test_grid_table_has_every_cell_once_with_plots(stopped_and_resumed):
    out, _, _ = stopped_and_resumed
    want = ([f"teachers/{t}" for t in TEACHERS] + [f"student/seed{s}" for s in SEEDS]
            + [f"{t}/{m}/seed{s}" for t in TEACHERS for m in METHODS for s in SEEDS])
    assert _summaries(out) == sorted(want)
    (table,) = json.load(open(out / "report.json"))["tables"]
    assert table["columns"] == TEACHERS and table["rows"] == ["teacher", "student"] + METHODS
    assert set(table["cells"]) == {f"{r}/{c}" for r in table["rows"] for c in TEACHERS}
    for key, cell in table["cells"].items():
        assert len(cell["values"]) == (1 if key.startswith("teacher/") else len(SEEDS))
        assert all(0.0 <= v <= 100.0 for v in cell["values"]) and cell["images_per_s"] > 0
        assert cell["spread"] >= 0 and min(cell["values"]) <= cell["mean"] <= max(cell["values"])
    with open(out / "report.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 + 2 + len(TEACHERS) * len(METHODS)
    assert {(r["row"], r["teacher"]) for r in lines} == {(r, c) for r in table["rows"] for c in TEACHERS}
    md = (out / "report.md").read_text()
    assert "| student baseline (shufflenet_v2_x0_5) |" in md and "| resnet32 " in md and "img/s" in md
    plots = json.load(open(out / "report.json"))["plots"]
    assert sorted(plots) == ["plots/bars.png", "plots/curves-resnet32.png", "plots/curves-squeezenet1_1.png"]
    for p in plots:
        data = (out / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_rebuilds_the_same_table_from_the_run_folders(stopped_and_resumed, tmp_path, capsys):
    out, _, _ = stopped_and_resumed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("report.md", "report.csv", "report.json"):
        os.remove(copy / name)
    shutil.rmtree(copy / "plots")
    main(["report", str(copy)])
    for name in ("report.md", "report.csv"):
        assert (copy / name).read_text() == (out / name).read_text()
    assert (copy / "report.md").read_text() in capsys.readouterr().out
    assert (copy / "plots" / "bars.png").stat().st_size > 5000


def test_finished_cells_are_not_reused_under_other_options(stopped_and_resumed, orl_data):
    out, _, _ = stopped_and_resumed
    before = (out / "report.md").read_text()
    with pytest.raises(UserError, match=r"teachers/resnet32 \(teacher resnet32\) finished with other options \(epochs\)"):
        run_grid(_spec(orl_data, out, train={**TRAIN, "epochs": 3}), progress=False)
    assert (out / "report.md").read_text() == before


def test_teacher_weights_and_recipe_with_published_numbers(stopped_and_resumed, orl_data, tmp_path):
    out, _, _ = stopped_and_resumed
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({
        "teachers": ["resnet32"], "student": STUDENT, "methods": ["kd"], "seeds": [0], "train": TRAIN,
        "published": {"teacher": "resnet32", "top1": {"teacher": 79.34, "kd": 67.35, "crd": 69.11},
                      "source": "a paper", "note": "other networks"}}))
    weights = out / "teachers" / "resnet32" / "checkpoint.pt"
    main(["grid", "--recipe", str(recipe), "--data", orl_data, "--out", str(tmp_path / "w"), "--quiet",
          "--teacher-weights", f"resnet32={weights}"])
    assert not (tmp_path / "w" / "teachers" / "resnet32" / "checkpoint.pt").exists()  # evaluated, not trained
    (table,) = json.load(open(tmp_path / "w" / "report.json"))["tables"]
    trained = json.load(open(out / "teachers" / "resnet32" / "summary.json"))["top1"]
    assert table["cells"]["teacher/resnet32"]["values"] == [trained]
    assert table["rows"] == ["teacher", "student", "kd", "crd"]  # crd: published only
    md = (tmp_path / "w" / "report.md").read_text()
    assert "published (resnet32)" in md and "| 79.34" in md and "| 69.11" in md and "other networks" in md


def test_bad_grid_input_fails_before_training(orl_data, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"teachers": ["resnet32"], "epochs": 3}')
    with pytest.raises(UserError, match="unknown key"):
        load_recipe(str(bad))
    with pytest.raises(UserError, match="neither a file nor a shipped recipe"):
        load_recipe("no-such-recipe")
    with pytest.raises(UserError, match="unknown option"):
        run_grid(_spec(orl_data, tmp_path / "a", teacher_train={"epoch": 3}))
    with pytest.raises(UserError, match="not among --teachers"):
        run_grid(_spec(orl_data, tmp_path / "b", teacher_weights={"ResNet18": str(bad)}))
    with pytest.raises(UserError, match="unknown"):
        run_grid(_spec(orl_data, tmp_path / "c", methods=["kd", "nope"]))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_shipped_recipes_load_and_carry_the_reference_setting():
    assert {"cifar100-seed", "crd-cifar100"} <= set(recipe_names())
    crd = load_recipe("crd-cifar100")
    assert crd["train"]["milestones"] == [150, 180, 210] and crd["train"]["epochs"] == 240
    assert crd["train"]["lr"] == 0.05 and crd["student_train"]["lr"] == 0.01 and crd["train"]["batch_size"] == 64
    assert crd["published"]["top1"]["crd"] == 69.11 and crd["published"]["top1"]["dkd"] == 70.35
    seed = load_recipe("cifar100-seed")
    assert seed["teachers"] == ["ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]
    assert seed["methods"] == ["kd", "fitnets", "rkd", "pkt", "l2", "at", "overhaul"]
    for recipe in (crd, seed):  # every name and option checks out against the registries and TrainConfig
        GridSpec(data="", out="", teachers=recipe["teachers"], student=recipe["student"], methods=recipe["methods"],
                 seeds=recipe["seeds"], train=recipe["train"], student_train=recipe.get("student_train", {}),
                 method_options=recipe.get("method_options", {})).check()


def test_method_cells_read_the_grids_teacher_cache(stopped_and_resumed):
    """The grid fills each (teacher, seed) cache with the signals of all its methods before the first method
    cell of that pair, so no method cell runs its teacher (the stopped and resumed kd cell included)."""
    out = str(stopped_and_resumed[0])
    sources = {(t, m, s): json.load(open(os.path.join(out, t, m, f"seed{s}", "summary.json")))["teacher_source"]
               for t in TEACHERS for m in METHODS for s in SEEDS}
    assert set(sources.values()) == {"cached"}, sources
    student = json.load(open(os.path.join(out, "student", "seed0", "summary.json")))
    assert student["teacher_source"] is None
