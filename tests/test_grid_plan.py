"""``fastkd grid --plan / --job / --status``: a 1 teacher x 3 methods x 1 seed grid on the ORL faces written as jobs
(a job per row, and with --no-one-pass per cell), the jobs run as separate processes two at a time where their
dependencies allow (one cell by its cell job, the rest of the row by the row job in one pass), and the table
compared with ``fastkd grid``'s on the same spec; a job started early, a job started twice, the status of a
half-done grid, and submit.sh's dependency chains."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from fastkd.cli import main

TRAIN = dict(epochs=1, batch_size=40, lr=0.05, res=32, workers=0, device="cpu", train_split="test")
RECIPE = dict(teachers=["resnet32"], student="shufflenet_v2_x0_5", methods=["kd", "at", "rkd"], seeds=[0], train=TRAIN)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread in this process too, so that the in-process grid and the job processes compute alike."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def planned(orl_data, tmp_path_factory):
    """(grid args, jobs out, plan dir, [(name, after, command)]) of a written plan (a job per row), and the same of
    the plan per cell (--no-one-pass) in plan dir/cells."""
    root = tmp_path_factory.mktemp("plan")
    recipe = root / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    args = ["--recipe", str(recipe), "--data", orl_data, "--quiet"]
    out, plan_dir = root / "jobs-out", root / "plan"
    main(["grid", *args, "--out", str(out), "--plan", str(plan_dir), "--gpus-per-job", "a100:1"])
    main(["grid", *args, "--out", str(out), "--plan", str(plan_dir / "cells"), "--no-one-pass"])
    assert not any(os.path.exists(out / d) for d in ("teachers", "student", "resnet32"))  # nothing trained
    return args, out, plan_dir, _jobs(plan_dir), _jobs(plan_dir / "cells")


def _jobs(plan_dir):
    lines = [line.split("\t") for line in (plan_dir / "jobs.txt").read_text().splitlines() if not line.startswith("#")]
    return [(name, [] if after == "-" else after.split(","), cmd) for name, after, cmd in lines]


def _holder(folder):
    """A child process holding ``folder``'s run lock until its stdin closes (started and ended by this test)."""
    code = ("import sys; from fastkd.ownership import run_lock\n"
            f"with run_lock({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def _release(child):
    child.stdin.close()
    child.wait(timeout=30)


def _run_stage(jobs, names):
    """Run the jobs ``names`` of jobs.txt concurrently (bash -c COMMAND), as a shell loop would, and wait; their
    stderr by name."""
    procs = {n: subprocess.Popen(["bash", "-c", cmd], env=ENV, stderr=subprocess.PIPE, text=True)
             for n, _, cmd in jobs if n in names}
    errs = {}
    for name, p in procs.items():
        errs[name] = p.communicate(timeout=300)[1]
        assert p.returncode == 0, (name, errs[name][-2000:])
    return errs


def _stages(jobs):
    """jobs.txt's jobs in waves of at most two whose dependencies are done (in file order)."""
    done, waves = set(), []
    left = [(n, after) for n, after, _ in jobs]
    while left:
        ready = [n for n, after in left if set(after) <= done][:2]
        assert ready, left  # every job's dependencies come before it
        waves.append(ready)
        done |= set(ready)
        left = [(n, a) for n, a in left if n not in ready]
    return waves


def test_plan_jobs_run_apart_give_the_grids_table(planned, orl_data, tmp_path, capsys):
    args, out, plan_dir, jobs, cell_jobs = planned
    names = [n for n, _, _ in jobs]
    assert names == ["teacher-resnet32", "cache-resnet32-seed0", "student-seed0", "row-resnet32-seed0", "report"]
    assert all(f"grid --job {n} " in cmd for n, _, cmd in jobs[:-1]) and "--quiet" in jobs[0][2]
    assert [n for n, _, _ in cell_jobs] == [*names[:3], "resnet32-kd-seed0", "resnet32-at-seed0",
                                            "resnet32-rkd-seed0", "report"]
    assert all("--no-one-pass" in cmd for _, _, cmd in cell_jobs[:-1])
    assert dict((n, a) for n, a, _ in cell_jobs)["resnet32-kd-seed0"] == ["teacher-resnet32", "cache-resnet32-seed0"]

    # a method job before its teacher: one line naming what it waits for, exit code 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["grid", *args, "--out", str(out), "--job", "row-resnet32-seed0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 3 and len(err) == 1 and "waits for teacher resnet32" in err[0], err
    assert "run job teacher-resnet32 first" in err[0]

    # a second copy of a running job refuses, naming the holder's pid and host
    child = _holder(out / "jobs" / "teacher-resnet32")
    try:
        with pytest.raises(SystemExit) as exc:
            main(["grid", *args, "--out", str(out), "--job", "teacher-resnet32"])
    finally:
        _release(child)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert f"job teacher-resnet32 is already running (pid {child.pid} on host {socket.gethostname()}" in err[0]

    waves = _stages(jobs)
    assert waves == [["teacher-resnet32", "student-seed0"], ["cache-resnet32-seed0"], ["row-resnet32-seed0"],
                     ["report"]]
    _run_stage(jobs, waves[0])
    # the cache is not filled yet: the method job waits for its cache job
    with pytest.raises(SystemExit) as exc:
        main(["grid", *args, "--out", str(out), "--job", "resnet32-at-seed0"])  # a cell job: the same
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 3 and "waits for the teacher cache of resnet32, seed 0" in err
    main(["report", str(out)])  # a partial table: the cells done so far
    (table,) = json.load(open(out / "report.json"))["tables"]
    assert set(table["cells"]) >= {"teacher/resnet32", "student/resnet32"}
    assert not any(k.startswith(("kd/", "at/", "rkd/")) for k in table["cells"])
    _run_stage(jobs, waves[1])

    # status: 2 cells done, kd running (its run lock held by another process), at never started (its cell job's
    # lock file left by a process that is gone: a stale lock, not a running job), rkd not started
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / "jobs" / "resnet32-at-seed0").mkdir()
    (out / "jobs" / "resnet32-at-seed0" / ".fastkd-lock").write_text(f"pid {gone.pid} on host {socket.gethostname()}\n")
    child = _holder(out / "resnet32" / "kd" / "seed0")
    try:
        capsys.readouterr()
        main(["grid", "--status", str(out)])
        status = capsys.readouterr().out
    finally:
        _release(child)
    assert "2/5 cells done" in status
    assert re.search(r"^teacher\s+1\s+0\s+0$", status, re.M) and re.search(r"^kd\s+0\s+1\s+0$", status, re.M)
    assert re.search(r"^at\s+0\s+0\s+1$", status, re.M) and re.search(r"^rkd\s+0\s+0\s+1$", status, re.M)
    assert f"pid {child.pid}@{socket.gethostname()} (alive)" in status
    assert re.search(rf"^resnet32/at/seed0\s+waiting\s+not started \(stale lock of pid {gone.pid}@", status, re.M)
    teacher_s = json.load(open(out / "teachers" / "resnet32" / "summary.json"))["train_seconds"]
    student_s = json.load(open(out / "student" / "seed0" / "summary.json"))["train_seconds"]
    assert f"{teacher_s:.1f} s" in status and f"{(teacher_s + student_s) / 2:.1f} s per finished cell; 3 cells left" \
        in status, status

    _run_stage(cell_jobs, ["resnet32-kd-seed0"])  # one cell by its cell job; the row job trains the other two
    err = _run_stage(jobs, waves[2])["row-resnet32-seed0"]
    assert "one pass over the data for 2 cells: resnet32 -> at, seed 0; resnet32 -> rkd, seed 0" in err, err[-2000:]
    _run_stage(jobs, waves[3])  # fastkd report OUT
    main(["grid", *args, "--out", str(out), "--job", "row-resnet32-seed0"])  # a finished job again: reads it back
    ref = tmp_path / "ref"
    main(["grid", *args, "--out", str(ref)])
    (mine,) = json.load(open(out / "report.json"))["tables"]
    (want,) = json.load(open(ref / "report.json"))["tables"]
    assert (mine["columns"], mine["rows"]) == (want["columns"], want["rows"]) == (
        ["resnet32"], ["teacher", "student", "kd", "at", "rkd"])
    assert {k: c["values"] for k, c in mine["cells"].items()} == {k: c["values"] for k, c in want["cells"].items()}
    assert len(mine["cells"]) == 5
    capsys.readouterr()
    main(["grid", "--status", str(out)])
    assert "5/5 cells done" in capsys.readouterr().out


def test_submit_script_chains_the_jobs_after_those_they_need(planned):
    _, out, plan_dir, jobs, _ = planned
    text = (plan_dir / "submit.sh").read_text()
    assert "#SBATCH --gpus=a100:1" in text.splitlines()[1]
    submitted = []
    for line in text.splitlines():
        m = re.match(r"submit (\S+) (\S+) (.*)$", line)
        if not m:
            continue
        name, dep, cmd = m.groups()
        kind, _, ids = dep.partition(":")
        after = re.findall(r"\$\{JOB\[([^\]]+)\]\}", ids)
        assert all(a in submitted for a in after), (name, after)  # submitted before the jobs that wait for it
        want = dict((n, (a, c)) for n, a, c in jobs)[name]
        assert after == want[0] and cmd == want[1]
        assert (dep == "''") if not after else kind == ("afterany" if name == "report" else "afterok")
        submitted.append(name)
    assert submitted == [n for n, _, _ in jobs]
    assert subprocess.run(["bash", "-n", str(plan_dir / "submit.sh")]).returncode == 0


def test_plan_mistakes_are_one_line_errors(planned, capsys):
    args, out, plan_dir, _, _ = planned
    for extra, msg in ((["--job", "nope"], "--job nope: no such job"),
                       (["--job", "report", "--plan", str(plan_dir)], "give one of the two"),
                       (["--plan", str(plan_dir), "--gpus-per-job", "1; rm"], "--gpus-per-job")):
        with pytest.raises(SystemExit) as exc:
            main(["grid", *args, "--out", str(out), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and msg in err[0], err
    with pytest.raises(SystemExit):
        main(["grid", "--status", str(plan_dir)])
    assert "holds no grid-spec.json" in capsys.readouterr().err


def test_a_job_with_two_gpus_runs_under_torchrun(orl_data, tmp_path):
    """--gpus-per-job 2: each job but the report is a torchrun of 2 processes (here on the CPU, gloo); the student
    job trains as one DDP run, rank 0 alone writing its done marker and its line."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    out, plan_dir = tmp_path / "out", tmp_path / "plan"
    main(["grid", "--recipe", str(recipe), "--data", orl_data, "--quiet", "--out", str(out), "--plan", str(plan_dir),
          "--gpus-per-job", "2"])
    jobs = _jobs(plan_dir)
    torchrun = "-m torch.distributed.run --standalone --nproc-per-node=2 -m fastkd grid --job "
    assert all(torchrun + name in cmd for name, _, cmd in jobs[:-1]) and "torch.distributed" not in jobs[-1][2]
    err = _run_stage(jobs, ["student-seed0"])["student-seed0"]
    assert err.count("[grid] job student-seed0 done") == 1, err[-2000:]
    assert json.loads((out / "jobs" / "student-seed0.done.json").read_text())["job"] == "student-seed0"
    from fastkd.train import checkpoint

    summary = json.loads((out / "student" / "seed0" / "summary.json").read_text())
    assert checkpoint.load(summary["checkpoint"])["world"] == 2  # one run of two ranks, not two runs
