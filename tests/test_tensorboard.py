"""``--tensorboard DIR`` (issue 21): metrics.jsonl's rows as TensorBoard scalars, read back with TensorBoard's own
reader; each epoch once across a resume; one folder per cell of compare, ablate and grid; the same weights as
without it; a one-line error without the tensorboard package."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastkd.cli import main
from fastkd.errors import UserError
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.tensorboard_log import INSTALL, ScalarLog
from fastkd.train.trainer import Trainer, train

pytest.importorskip("tensorboard")

FAST = dict(student="shufflenet_v2_x0_5", epochs=2, batch_size=64, lr=0.05, res=32, workers=0, progress=False,
            device="cpu")
ARGS = ["--model", "shufflenet_v2_x0_5", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--res", "32",
        "--workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    """These runs are tiny: one thread is as fast, and far faster than two on a busy machine (measured 13x on
    our 2 cores with other jobs running); both runs compared for their weights use it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _events(folder) -> dict:
    """{tag: [(step, value), ...]} of every scalar event in ``folder``, as TensorBoard reads them (nothing purged,
    so that a point written twice shows twice)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _rows(run) -> list:
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def _expected(rows) -> dict:
    """Every numeric field but epoch, at step = epoch, as float32 (TensorBoard's scalar type)."""
    out: dict = {}
    for row in rows:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                out.setdefault(k.replace("_", "/", 1), []).append((row["epoch"], np.float32(v).item()))
    return out


def _event_files(folder) -> list:
    return sorted(f for f in os.listdir(folder) if f.startswith("events.out.tfevents"))


def _weights(run):
    return checkpoint.load(os.path.join(run, "checkpoint.pt"))["model"]


def test_train_writes_metrics_as_scalars_once_across_a_resume_and_the_same_weights(orl_data, tmp_path, monkeypatch):
    plain, run, tb = tmp_path / "plain", tmp_path / "run", tmp_path / "tb"
    train(TrainConfig(data=orl_data, out=str(plain), **FAST))  # the same run without --tensorboard
    real_save = checkpoint.save_atomic

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint, before its scalars

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_die)
    with pytest.raises(SystemExit):
        main(["train", "--data", orl_data, "--out", str(run), "--tensorboard", str(tb), *ARGS])
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert not tb.exists()  # no event file before a row
    # the resumed run writes epoch 1 (the checkpoint's) at once, then epoch 2
    main(["train", "--data", orl_data, "--out", str(run), "--tensorboard", str(tb), "--resume", *ARGS])
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    events = _events(tb)
    assert events == _expected(rows)
    assert {"train/loss", "train/ce", "train/top1", "train/images_per_s", "lr", "test/top1", "test/top5"} <= set(events)
    files = _event_files(tb)
    # resuming the finished run adds no point and no file; the weights are those of the run without it
    main(["train", "--data", orl_data, "--out", str(run), "--tensorboard", str(tb), "--resume", *ARGS])
    assert _events(tb) == events and _event_files(tb) == files
    a, b = _weights(plain), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a folder holding epochs a run has not reached is another run's
    with pytest.raises(UserError, match="another run's"):
        ScalarLog(str(tb), rows[:1])


def test_compare_writes_one_folder_per_cell_and_exports_reused_cells(orl_data, tmp_path):
    from fastkd.experiments.compare import run_compare

    cmp = tmp_path / "cmp"
    base = TrainConfig(data=orl_data, out="", **{**FAST, "epochs": 1}, tensorboard=str(tmp_path / "tb"))
    run_compare(base, ["ce"], [0, 1], str(cmp))  # trains both cells
    # reused (finished) cells: their metrics.jsonl into a folder that lacks them; nothing more into one that has them
    files = _event_files(tmp_path / "tb" / "ce" / "seed0")
    run_compare(replace(base, tensorboard=str(tmp_path / "later")), ["ce"], [0, 1], str(cmp))
    run_compare(base, ["ce"], [0, 1], str(cmp))
    assert _event_files(tmp_path / "tb" / "ce" / "seed0") == files
    for tb in ("tb", "later"):
        assert sorted(os.listdir(tmp_path / tb)) == ["ce"]
        assert sorted(os.listdir(tmp_path / tb / "ce")) == ["seed0", "seed1"]
        for seed in ("seed0", "seed1"):
            rows = _rows(cmp / "ce" / seed)
            assert rows and _events(tmp_path / tb / "ce" / seed) == _expected(rows)


def test_grid_and_ablate_cells_write_under_their_run_folders_names(tmp_path, monkeypatch):
    from fastkd.experiments import ablate, grid

    spec = grid.GridSpec(data="d", out=str(tmp_path / "g"), teachers=["resnet56"], student="resnet20", methods=["kd"],
                         seeds=[0], train={"tensorboard": str(tmp_path / "tb")})
    got = {os.path.relpath(grid._cell_config(spec, c, None).tensorboard, tmp_path / "tb") for c in grid.plan(spec)}
    assert got == {os.path.relpath(c.out, spec.out) for c in grid.plan(spec)}
    assert got == {os.path.join("teachers", "resnet56"), os.path.join("student", "seed0"),
                   os.path.join("resnet56", "kd", "seed0")}
    seen = []
    monkeypatch.setattr(ablate, "run_or_reuse",
                        lambda cfg, *a: seen.append(cfg.tensorboard) or {"top1": 1.0, "train_seconds": 1.0})
    monkeypatch.setattr(ablate, "write_results", lambda *a: None)
    ablate.run_ablation(TrainConfig(data="d", out="", student="resnet20", tensorboard="tb"), "abl", only=["cutout"])
    assert seen == [os.path.join("tb", "00-baseline"), os.path.join("tb", "07-cutout")]


def test_every_multi_run_command_takes_the_option():
    import fastkd.cli.ablate  # noqa: F401  (registers the commands)
    import fastkd.cli.compare  # noqa: F401
    import fastkd.cli.grid  # noqa: F401
    import fastkd.cli.train  # noqa: F401
    from fastkd.cli import cli

    for name in ("train", "grid", "compare", "ablate"):
        options = {p.name: p for p in cli.commands[name].params}
        assert options["tensorboard"].opts == ["--tensorboard"], name


def test_without_the_package_a_one_line_error_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = TrainConfig(data=str(tmp_path / "no-data"), out=str(tmp_path / "run"), student="resnet20",
                      tensorboard=str(tmp_path / "tb"))
    with pytest.raises(UserError, match=r"pip install 'fastkd\[tensorboard\]'"):
        Trainer(cfg)  # before the (missing) data is opened
    from fastkd.experiments.compare import run_compare

    with pytest.raises(UserError, match="tensorboard package"):
        run_compare(cfg, ["ce"], [0], str(tmp_path / "cmp"))
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"), "--model", "resnet20",
              "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and err.startswith("fastkd: error: ") and INSTALL in err
    assert not os.listdir(tmp_path)  # no run folder, no events
