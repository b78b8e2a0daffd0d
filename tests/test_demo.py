"""``fastkd demo``: the shape of its table (teacher, the student alone and the distilled student as mean and
spread over seeds with every seed's value, the online-teacher timing row), the cache speed-up line, the line
that says how to read it, and ``demo.json``. Accuracy values are not asserted: they depend on the machine.
Ownership of the demo's folders is tested in test_ownership.py."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from fastkd.cli import main

LABELS = ("teacher", "student alone", "distilled (teacher cache)", "distilled (teacher online)")


@pytest.fixture
def fake_steps(monkeypatch):
    """The demo with conversion, cache fill and training replaced by stand-ins: top-1 80 + 1.25 x seed for
    the student alone, 10 points more when distilled; the online teacher trains at half the cached rate."""
    import fastkd.experiments.demo as demo

    calls = []

    def fake_convert(dataset, root, out, opts):
        calls.append(("convert", out))
        os.makedirs(out)
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump({"format": "fastkd-conversion", "checksums": {}}, f)

    def fake_cache(cfg, batch_size=256, progress=True):
        calls.append(("cache", cfg.teacher_cache, cfg.seed))

    def fake_train(cfg, resume=False):
        calls.append(("train", cfg.out, cfg.seed))
        online = cfg.method != "ce" and not cfg.teacher_cache
        top1 = 90.0 if cfg.student == demo.TEACHER else 80.0 + 1.25 * cfg.seed + (10.0 if cfg.method != "ce" else 0.0)
        return {"student": cfg.student, "method": cfg.method, "seed": cfg.seed, "params": 1, "top1": top1,
                "top5": 99.0, "train_seconds": 2.0 if online else 1.0,
                "train_images_per_s": 100.0 if online else 200.0}

    monkeypatch.setattr(demo, "convert", fake_convert)
    monkeypatch.setattr(demo, "build_cache", fake_cache)
    monkeypatch.setattr(demo, "train", fake_train)
    return calls


def test_labels_are_the_demos():
    from fastkd.experiments import demo

    assert demo.LABELS == LABELS


def _table(stdout: str) -> dict:
    """{label: the rest of its table line} of the demo's printed table."""
    rows = {}
    for line in stdout.splitlines():
        for label in LABELS:
            if line.startswith(label + "  "):
                rows[label] = line[len(label):].split()
    return rows


def test_demo_prints_mean_spread_rows_speedup_and_how_to_read(fake_steps, tmp_path, capsys):
    from fastkd.experiments.demo import run_demo

    out = str(tmp_path / "demo")
    result = run_demo(out, epochs=1, teacher_epochs=1, seeds=(0, 1, 2), device="cpu", progress=False)
    stdout = capsys.readouterr().out
    header = next(line for line in stdout.splitlines() if line.startswith("run "))
    for column in ("top-1 % mean", "spread", "top-1 % per seed", "wall s / run", "train img/s"):
        assert column in header
    rows = _table(stdout)
    assert set(rows) == set(LABELS)
    assert "0,1,2" in rows["student alone"] and "0,1,2" in rows["distilled (teacher cache)"]
    assert " ".join(rows["student alone"]).count(" / ") == 2  # three per-seed values
    assert "80.00 / 81.25 / 82.50" in " ".join(rows["student alone"])
    assert "2.50" in rows["student alone"]  # spread = max - min
    speed = [line for line in stdout.splitlines() if line.startswith("Teacher cache:")]
    assert len(speed) == 1 and re.search(r"\b2\.00x\b", speed[0]), speed  # 200 vs 100 img/s
    assert "and the same top-1" in speed[0]
    read = [line for line in stdout.splitlines() if line.startswith("How to read it:")]
    assert len(read) == 1 and "distillation helps" in read[0] and "+10.00 points" in read[0]
    saved = json.load(open(os.path.join(out, "demo.json")))
    assert saved["student_alone"]["top1_per_seed"] == [80.0, 81.25, 82.5]
    assert saved["student_alone"]["top1_spread"] == 2.5 and saved["distilled"]["top1_mean"] == 91.25
    assert saved["cache"]["speedup"] == 2.0 and saved["spread"].startswith("max - min")
    assert saved["setting"]["seeds"] == [0, 1, 2] and saved["gain_points"] == 10.0
    assert result["table"] == saved["table"]
    # each distilled seed reads its own seed's cache; the timing run has none
    trains = {c[1]: c[2] for c in fake_steps if c[0] == "train"}
    caches = [(c[1], c[2]) for c in fake_steps if c[0] == "cache"]
    assert caches == [(os.path.join(out, "teacher_cache", f"seed{k}"), k) for k in (0, 1, 2)]
    assert trains[os.path.join(out, "distilled_online")] == 0


def test_verdict_names_gain_and_spreads():
    from fastkd.experiments.demo import verdict

    def g(values):
        return {"seeds": list(range(len(values))), "top1_mean": sum(values) / len(values),
                "top1_spread": max(values) - min(values)}

    assert "distillation helps" in verdict(g([80, 82.5, 81.25]), g([90, 91.25, 92.5]))
    assert "no clear gain" in verdict(g([80, 85, 82.5]), g([82.5, 86.25, 83.75]))
    assert "does not beat" in verdict(g([80, 81.25, 82.5]), g([78.75, 80, 81.25]))
    assert "one seed" in verdict(g([80]), g([90]))


def test_cli_defaults_are_the_demos():
    from fastkd.cli import demo as cli_demo
    from fastkd.experiments import demo

    assert (cli_demo.EPOCHS, cli_demo.TEACHER_EPOCHS, cli_demo.METHOD, cli_demo.BACKEND) == (
        demo.EPOCHS, demo.TEACHER_EPOCHS, demo.METHOD, demo.BACKEND)
    assert tuple(int(s) for s in cli_demo.SEEDS.split(",")) == demo.SEEDS


@pytest.mark.parametrize("argv, says", [(["--seeds", "0,x"], "--seeds"), (["--seeds", ","], "--seeds"),
                                        (["--method", "ce"], "--method"), (["--method", "nope"], "unknown method")])
def test_demo_refuses_bad_options_in_one_line(fake_steps, tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "d"), "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("fastkd: error: ") and says in err[0], err
    assert fake_steps == []


def test_demo_end_to_end_small(orl_data, tmp_path, capsys):
    """The real steps, one epoch each, two seeds: distilled runs read their seed's cache (the teacher never
    runs), the timing run runs it online."""
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(orl_data, out / "data")  # the session's conversion, reused by the demo
    main_args = ["demo", "--out", str(out), "--epochs", "1", "--teacher-epochs", "1", "--seeds", "0,1",
                 "--device", "cpu", "--workers", "0", "--quiet"]
    main(main_args)  # returns on success (exit 0)
    stdout = capsys.readouterr().out
    assert set(_table(stdout)) == set(LABELS)
    assert any(line.startswith("Teacher cache:") and re.search(r"\d\.\d\dx", line) for line in stdout.splitlines())
    assert any(line.startswith("How to read it:") for line in stdout.splitlines())
    saved = json.load(open(out / "demo.json"))
    assert [r["teacher_source"] for r in saved["distilled"]["runs"].values()] == ["cached", "cached"]
    assert saved["distilled_online"]["teacher_source"] == "online"
    # a float32 cache filled at the training batch size is the online teacher bit for bit: the same run
    assert saved["distilled_online"]["top1"] == saved["distilled"]["runs"]["0"]["top1"]
    from fastkd.train import checkpoint

    cached, online = (checkpoint.load(str(out / name / "checkpoint.pt"))["model"]
                      for name in ("distilled/seed0", "distilled_online"))
    assert all(cached[k].equal(online[k]) for k in cached)
    assert len(saved["student_alone"]["top1_per_seed"]) == 2 and saved["cache"]["fill_seconds"] > 0
