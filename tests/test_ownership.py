"""Nothing a user owns is ever deleted (issue 19): convert, demo, compare/ablate/grid cells and train remove or
overwrite only what fastkd made (a marker, or a manifest listing every file), and a run folder is written by
one process at a time (a lock naming its holder). Each case keeps a user file that must survive; the
refusals are one line (exit 2 through the CLI)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fastkd.cli import main
from fastkd.converters.convert import convert
from fastkd.errors import UserError
from fastkd.ownership import LOCK, MARKER, claim_run, marker_kind, run_lock
from fastkd.train.config import TrainConfig
from synthetic_orl import convert_opts as _opts

NOTE = "my notes, not fastkd's\n"


def _note(folder, name="notes.txt"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(NOTE)
    return path


def _kept(path):
    with open(path) as f:
        return f.read() == NOTE


def _cli_error(capsys, *argv):
    """Run ``fastkd ARGV`` in-process; returns its one error line (asserting exit code 2, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastkd: error: "), err
    return err[0]


# ---- convert ---------------------------------------------------------------------------------------------
def test_convert_refuses_a_user_folder_even_with_overwrite(fake_orl, tmp_path, capsys):
    root, _ = fake_orl
    out = tmp_path / "mydata"
    note = _note(out)
    for extra in ([], ["--overwrite"]):
        line = _cli_error(capsys, "convert", "--dataset", "orl_faces", "--root", root, "--out", str(out), "--quiet",
                          *extra)
        assert "notes.txt" in line and "not a fastkd conversion" in line
    assert _kept(note) and sorted(os.listdir(out)) == ["notes.txt"]


def test_convert_refuses_out_overlapping_root(fake_orl, tmp_path, capsys):
    import shutil

    src, _ = fake_orl
    root = tmp_path / "ORL_faces"
    shutil.copytree(src, root)
    before = sorted(os.listdir(root))
    for out in (root, root / "converted", tmp_path):  # the same folder, inside it, around it
        line = _cli_error(capsys, "convert", "--dataset", "orl_faces", "--root", str(root), "--out", str(out),
                          "--overwrite", "--quiet")
        assert "overlaps --root" in line
    assert sorted(os.listdir(root)) == before and os.path.isfile(root / "s1" / "1.pgm")
    assert not (root / "converted").exists()


def test_convert_keeps_a_conversion_holding_user_files_and_foreign_work_folders(fake_orl, tmp_path):
    root, _ = fake_orl
    out = str(tmp_path / "data")
    convert("orl_faces", root, out, _opts())
    assert marker_kind(out) == "conversion"  # the marker travels with the conversion, outside its checksums
    note = _note(os.path.join(out, "dali"))
    with pytest.raises(UserError, match=r"holds a conversion and files fastkd did not write \(dali/notes.txt\)"):
        convert("orl_faces", root, out, _opts(overwrite=True))
    assert _kept(note)
    os.remove(note)
    partial_note, old_note = _note(out + ".partial"), _note(out + ".old")
    with pytest.raises(UserError, match=r"data.partial exists and is not the work folder"):
        convert("orl_faces", root, out, _opts(overwrite=True))
    os.remove(partial_note)
    os.rmdir(out + ".partial")
    with pytest.raises(UserError, match=r"data.old exists and is not a conversion fastkd set aside"):
        convert("orl_faces", root, out, _opts(overwrite=True))
    assert _kept(old_note)
    os.remove(old_note)
    os.rmdir(out + ".old")
    manifest = convert("orl_faces", root, out, _opts(overwrite=True, jpeg_quality=50))  # its own: replaced
    assert manifest["options"]["jpeg_quality"] == 50 and not os.path.exists(out + ".old")


def test_convert_into_an_empty_folder(fake_orl, tmp_path):
    root, _ = fake_orl
    out = tmp_path / "empty"
    out.mkdir()
    assert convert("orl_faces", root, str(out), _opts())["splits"]["train"]["count"] == 320


# ---- demo ------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_demo_steps(monkeypatch):
    """The demo with its conversion, cache fill and training replaced by stand-ins that write a file where
    the real step writes (the ownership logic is what is tested, not the training)."""
    import fastkd.experiments.demo as demo

    calls = []

    def fake_convert(dataset, root, out, opts):
        calls.append(("convert", out))
        os.makedirs(out + ".partial")
        with open(os.path.join(out + ".partial", "manifest.json"), "w") as f:
            json.dump({"format": "fastkd-conversion", "checksums": {}}, f)
        os.replace(out + ".partial", out)

    def fake_cache(cfg, batch_size=256, progress=True):
        calls.append(("cache", cfg.teacher_cache))
        open(os.path.join(cfg.teacher_cache, "meta.json"), "w").close()

    def fake_train(cfg, resume=False):
        calls.append(("train", cfg.out))
        assert not os.path.exists(os.path.join(cfg.out, "summary.json"))  # the earlier demo's run was cleared
        with open(os.path.join(cfg.out, "summary.json"), "w") as f:
            f.write("{}")
        return {"student": cfg.student, "method": cfg.method, "seed": cfg.seed, "params": 1, "top1": 1.0,
                "top5": 2.0, "train_seconds": 1.0, "train_images_per_s": 3.0}

    monkeypatch.setattr(demo, "convert", fake_convert)
    monkeypatch.setattr(demo, "build_cache", fake_cache)
    monkeypatch.setattr(demo, "train", fake_train)
    return calls


def test_demo_refuses_user_folders_before_any_work(fake_demo_steps, tmp_path, capsys):
    project = tmp_path / "my_project"
    data_note, teacher_note = _note(project / "data"), _note(project / "teacher", "weights.pt")
    line = _cli_error(capsys, "demo", "--out", str(project), "--epochs", "1", "--device", "cpu", "--quiet")
    assert "data, teacher hold files" in line
    assert fake_demo_steps == []  # refused before converting or training anything
    assert _kept(data_note) and _kept(teacher_note)


def test_demo_twice_replaces_only_its_own_folders(fake_demo_steps, tmp_path):
    from fastkd.experiments.demo import run_demo

    project = str(tmp_path / "demo")
    run_demo(project, epochs=1, teacher_epochs=1, device="cpu", progress=False)
    seeded = [os.path.join(name, f"seed{k}") for name in ("student", "distilled", "teacher_cache") for k in (0, 1, 2)]
    for name in ["teacher", "student", "distilled", "teacher_cache", "distilled_online"] + seeded:
        assert marker_kind(os.path.join(project, name)) == "demo", name
    assert not os.path.exists(os.path.join(project, "teacher", LOCK))  # released and removed
    # teacher, the student alone, the cache fills, the distilled student, the online-teacher timing run
    once = ["train"] + ["train"] * 3 + ["cache"] * 3 + ["train"] * 3 + ["train"]
    run_demo(project, epochs=1, teacher_epochs=1, seeds=(0, 1), device="cpu", progress=False)  # emptied and rerun
    assert [c[0] for c in fake_demo_steps] == ["convert"] + once + ["train"] * 3 + ["cache"] * 2 + ["train"] * 3
    assert not os.path.exists(os.path.join(project, "student", "seed2"))  # the earlier demo's third seed went
    note = _note(os.path.join(project, "student2"))  # a folder the demo does not use is left alone
    os.remove(os.path.join(project, "distilled", MARKER))  # distilled no longer says the demo made it
    with pytest.raises(UserError, match=r"distilled holds files an earlier `fastkd demo` did not make"):
        run_demo(project, epochs=1, device="cpu", progress=False)
    assert os.path.isfile(os.path.join(project, "distilled", "seed0", "summary.json")) and _kept(note)


# ---- compare / ablate / grid cells -----------------------------------------------------------------------
def _cfg(out, **kw):
    return TrainConfig(data="unused", out=str(out), student="shufflenet_v2_x0_5", epochs=1, device="cpu",
                       progress=False, **kw)


def test_cell_folder_with_user_files_is_not_cleared(tmp_path, monkeypatch):
    import fastkd.experiments.runs as runs

    monkeypatch.setattr(runs, "train", lambda cfg, resume=False: pytest.fail("trained over a user folder"))
    cell = tmp_path / "cmp" / "ce" / "seed0"
    note = _note(cell)
    with pytest.raises(UserError, match=r"seed0 holds files fastkd did not write \(notes.txt\)"):
        runs.run_or_reuse(_cfg(cell), "ce, seed 0", "compare")
    assert _kept(note) and sorted(os.listdir(cell)) == ["notes.txt"]


def test_cell_folder_it_made_is_cleared_and_marked(tmp_path, monkeypatch):
    import fastkd.experiments.runs as runs

    trained = []

    def fake_train(cfg, resume=False):
        trained.append(sorted(os.listdir(cfg.out)))
        return {"top1": 1.0}
    monkeypatch.setattr(runs, "train", fake_train)
    cell, legacy = tmp_path / "cell", tmp_path / "legacy"
    runs.run_or_reuse(_cfg(cell), "a", "compare")
    assert marker_kind(str(cell)) == "cell"
    (cell / "config.json").write_text("{}")  # a cell stopped before its first checkpoint
    (cell / "scratch").mkdir()
    _note(legacy, "config.json")  # a cell of a fastkd before the markers: only run files
    runs.run_or_reuse(_cfg(cell), "a", "compare")
    runs.run_or_reuse(_cfg(legacy), "b", "compare")
    assert trained == [[LOCK, MARKER]] * 3  # emptied, the marker and the held lock kept
    assert sorted(os.listdir(cell)) == [MARKER]  # the lock file goes with the lock


_HOLD = """
import sys, time
from fastkd.ownership import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def other_process(tmp_path):
    """Start a process holding the run lock of a folder; yields (start(folder) -> pid)."""
    procs = []

    def start(folder):
        p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p.pid

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_cell_another_process_trains_is_left_alone(tmp_path, monkeypatch, other_process):
    import fastkd.experiments.runs as runs

    monkeypatch.setattr(runs, "train", lambda cfg, resume=False: pytest.fail("trained a locked cell"))
    cell = tmp_path / "cell"
    (cell).mkdir()
    pid = other_process(cell)
    (cell / MARKER).write_text(json.dumps({"made_by": "fastkd", "kind": "cell"}))
    (cell / "config.json").write_text("{}")
    with pytest.raises(UserError, match=rf"in use by another fastkd run \(pid {pid} on host "):
        runs.run_or_reuse(_cfg(cell), "a", "compare")
    assert (cell / "config.json").read_text() == "{}"


# ---- train -----------------------------------------------------------------------------------------------
def test_train_refuses_a_finished_run_without_resume(orl_data, tmp_path, capsys):
    run = tmp_path / "run"
    files = {"summary.json": '{"top1": 50}', "metrics.jsonl": '{"epoch": 1}\n', "config.json": "{}"}
    for name, text in files.items():  # a finished run whose checkpoint.pt was removed
        _note(run, name)
        (run / name).write_text(text)
    line = _cli_error(capsys, "train", "--data", orl_data, "--out", str(run), "--model", "shufflenet_v2_x0_5",
                      "--epochs", "1", "--device", "cpu", "--workers", "0", "--quiet")
    assert "already holds a run (config.json, metrics.jsonl, summary.json); pass --resume" in line
    assert {n: (run / n).read_text() for n in files} == files and sorted(os.listdir(run)) == sorted(files)


def test_two_runs_on_one_out_refuse_each_other(tmp_path, other_process):
    from fastkd.train.trainer import train

    out = tmp_path / "run"
    pid = other_process(out)
    for resume in (False, True):  # refused before the data is even opened
        with pytest.raises(UserError, match=rf"{out} is in use by another fastkd run \(pid {pid} on host "):
            train(_cfg(out), resume=resume)
    (out / "config.json").write_text("{}")  # the other run started writing: named rather than its files
    with pytest.raises(UserError, match=rf"in use by another fastkd run \(pid {pid}"):
        train(_cfg(out))
    assert sorted(os.listdir(out)) == [LOCK, "config.json"]


def test_run_lock_is_reentrant_released_and_leaves_no_trace(tmp_path):
    out = tmp_path / "fresh"
    with run_lock(str(out)):
        with run_lock(str(out)):  # a multi-run command locks a cell, then train locks it again
            assert (out / LOCK).read_text().startswith(f"pid {os.getpid()} on host ")
        assert (out / LOCK).exists()
    assert not out.exists()  # created here, left empty: removed
    with pytest.raises(UserError, match="pass --resume"):
        os.makedirs(out)
        (out / "checkpoint.pt").write_bytes(b"x")
        with claim_run(str(out), False):
            pass
    with claim_run(str(out), True):
        pass
    assert sorted(os.listdir(out)) == ["checkpoint.pt"]


def test_real_training_holds_the_lock_and_releases_it(orl_data, tmp_path, monkeypatch):
    """A real (tiny) run: the lock is held while it trains and gone after, and a second run is refused."""
    from fastkd.train import trainer as trainer_module

    out = tmp_path / "run"
    seen = []
    real_fit = trainer_module.Trainer.fit

    def fit(self):
        seen.append((out / LOCK).read_text())
        with pytest.raises(UserError, match="in use by another fastkd run"):
            subprocess_claim(out)
        return real_fit(self)
    monkeypatch.setattr(trainer_module.Trainer, "fit", fit)
    start = time.time()
    trainer_module.train(TrainConfig(data=orl_data, out=str(out), student="shufflenet_v2_x0_5", epochs=1,
                                     batch_size=64, res=32, workers=0, device="cpu", progress=False,
                                     train_split="test"))
    assert seen and seen[0].startswith(f"pid {os.getpid()}")
    assert not (out / LOCK).exists() and (out / "summary.json").exists()
    assert time.time() - start < 60


def subprocess_claim(out):
    """Try the lock from another process (flock is per process here): re-raise its refusal as a UserError."""
    code = ("import sys\nfrom fastkd.errors import UserError\nfrom fastkd.ownership import run_lock\n"
            "try:\n    run_lock(sys.argv[1]).__enter__()\nexcept UserError as e:\n    print(e); sys.exit(3)\n")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if p.returncode == 3:
        raise UserError(p.stdout.strip())
    raise AssertionError(f"the other process got the lock: {p.stdout} {p.stderr}")
