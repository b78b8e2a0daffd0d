"""``fastkd grid --plan DIR`` and ``--job NAME``: a grid as separate jobs, for a cluster with a shared file system.

The jobs of a grid, in dependency order (:func:`jobs`)::

    teacher-<t>             the teacher cell (trained, or evaluated from --teacher-weights)
    student-seed<k>         the student baseline of seed k
    cache-<t>-seed<k>       the (teacher, seed) teacher cache, for every method of the grid  (after teacher-<t>)
    row-<t>-seed<k>         the method cells of (t, k) in one pass over the data (``--one-pass``, the default)
                                                                       (after teacher-<t> and cache-<t>-seed<k>)
    <t>-<m>-seed<k>         or, with ``--no-one-pass``, one job per method cell  (after the same two)
    report                  ``fastkd report OUT``: the table of the cells done (after every other job, done or not)

Each job is a plain ``fastkd grid --job NAME <the grid's own options>`` command: it recomputes the same spec and
runs its cells with :func:`fastkd.experiments.runs.run_cells`, so a job run again skips what is done and
resumes a stopped cell. ``--job`` takes the names of either plan (a row job, or one cell of it). A job holds a
lock (``OUT/jobs/<name>/``, :func:`fastkd.ownership.run_lock`) for its whole run: a second copy exits with one
line naming the holder (pid and host). A job whose inputs are not finished exits with one line naming what it
waits for, exit code :data:`NOT_READY`. A finished job leaves ``OUT/jobs/<name>.done.json``. ``--plan DIR``
writes ``jobs.txt`` (one job a line: name, the jobs it waits for, command) and ``submit.sh`` (``sbatch
--dependency=afterok:`` chains; the same file is each job's script). With ``--gpus-per-job`` of 2 or more, a job's
command is ``python -m torch.distributed.run --standalone --nproc-per-node=N -m fastkd grid --job NAME ...``: N
processes on the job's node (DDP), rank 0 holding the lock and writing the done marker.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from fastkd.atomic import atomic_write_json, atomic_write_text
from fastkd.errors import UserError
from fastkd.experiments.grid import (Cell, GridSpec, _cell_config, _evaluate_teacher, _fill_teacher_cache,
                                     _save_spec, plan)
from fastkd.log import log
from fastkd.ownership import LOCK, is_main, run_lock

NOT_READY = 3  # the exit code of a job whose inputs are not finished (a user's mistake is 2)
JOBS = "jobs"  # OUT/jobs/: job locks and done markers


class NotReady(UserError):
    """A job started before the jobs it needs finished."""


ROW, CELL = "row", "cell"  # the method cells' jobs: one per (teacher, seed) row, or one per cell


class Job(NamedTuple):
    name: str
    kind: str  # "teacher", "student", "cache", "row", "cell" or "report"
    cells: Tuple[Cell, ...]  # the cells it trains (none for cache and report)
    teacher: Optional[str]
    seed: int
    after: Tuple[str, ...]  # the jobs it needs


def jobs(spec: GridSpec, per: str = ROW) -> List[Job]:
    """Every job of ``spec`` (a checked spec), each after the jobs it needs; the method cells ``per`` row (one
    job trains a (teacher, seed) row in one pass over the data) or ``per`` cell."""
    out, rows = [], {}
    for cell in plan(spec):
        if cell.row == "teacher":
            out.append(Job(f"teacher-{cell.teacher}", "teacher", (cell,), cell.teacher, 0, ()))
        elif cell.row == "student":
            out.append(Job(f"student-seed{cell.seed}", "student", (cell,), None, cell.seed, ()))
        else:
            key, needs = (cell.teacher, cell.seed), (f"teacher-{cell.teacher}", f"cache-{cell.teacher}-seed{cell.seed}")
            if key not in rows:
                rows[key] = []
                out.append(Job(needs[1], "cache", (), cell.teacher, cell.seed, needs[:1]))
            rows[key].append(cell)
            if per == CELL:
                out.append(Job(f"{cell.teacher}-{cell.row}-seed{cell.seed}", CELL, (cell,), cell.teacher, cell.seed,
                               needs))
    if per == ROW:
        out += [Job(f"row-{t}-seed{k}", ROW, tuple(cells), t, k, (f"teacher-{t}", f"cache-{t}-seed{k}"))
                for (t, k), cells in rows.items()]
    ordered = [j for kind in ("teacher", "cache", "student", ROW, CELL) for j in out if j.kind == kind]
    return ordered + [Job("report", "report", (), None, 0, tuple(j.name for j in ordered))]


def job_locks(spec: GridSpec) -> Dict[Cell, List[str]]:
    """Each cell's job lock folders: those of the job that trains it in the plan by row, then by cell."""
    out: Dict[Cell, List[str]] = {}
    for per in (ROW, CELL):
        for j in jobs(spec, per):
            for cell in j.cells:
                out.setdefault(cell, []).append(lock_folder(spec.out, j.name))
    return out


def done_marker(out: str, name: str) -> str:
    return os.path.join(out, JOBS, f"{name}.done.json")


def lock_folder(out: str, name: str) -> str:
    return os.path.join(out, JOBS, name)


def lock_holder(folder: str) -> Optional[Tuple[Optional[int], str, str]]:
    """(pid, host, text) written in ``folder``'s run lock file by its holder; None when there is no lock file."""
    try:
        with open(os.path.join(folder, LOCK)) as f:
            text = f.read().strip()
    except OSError:
        return None
    m = re.match(r"pid (\d+) on host (\S+)", text)
    return (int(m.group(1)), m.group(2), text) if m else (None, "", text or "a process starting")


# ---- --job NAME -----------------------------------------------------------------------------------------
def run_job(spec: GridSpec, name: str, progress: bool = True, one_pass: bool = True) -> None:
    """Run job ``name`` of ``spec`` (of the plan by row or by cell): its cells (or cache), reusing what is done, a
    row's cells in one pass over the data with ``one_pass``; a UserError when another process runs it,
    :class:`NotReady` when a job it needs has not finished."""
    spec = spec.check()
    by_name = {j.name: j for per in (ROW, CELL) for j in jobs(spec, per)}
    if name not in by_name:
        raise UserError(f"--job {name}: no such job in this grid; its jobs are "
                        f"{', '.join(j.name for j in jobs(spec, ROW if one_pass else CELL))}")
    job = by_name[name]
    os.makedirs(os.path.join(spec.out, JOBS), exist_ok=True)
    folder = lock_folder(spec.out, name)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(folder))
        except UserError:
            held = lock_holder(folder)
            raise UserError(f"job {name} is already running ({held[2] if held else 'another process'}; lock "
                            f"{os.path.join(folder, LOCK)}); this copy exits: wait for that one or stop it") from None
        start = time.time()
        if is_main():  # under torchrun, rank 0 writes the grid's files
            _save_spec(spec)
        _run(spec, job, progress, one_pass)
        if is_main():
            atomic_write_json(done_marker(spec.out, name), {"job": name, "host": socket.gethostname(),
                                                            "seconds": time.time() - start, "finished": time.time()})
            log(f"[grid] job {name} done ({time.time() - start:.1f} s)")


def _run(spec: GridSpec, job: Job, progress: bool, one_pass: bool) -> None:
    from dataclasses import replace

    from fastkd.experiments.report import write_report
    from fastkd.experiments.runs import run_cells

    if job.kind == "report":
        write_report(spec.out)
        return
    if job.kind == "teacher" and job.teacher in spec.teacher_weights:
        _evaluate_teacher(spec, job.cells[0], spec.teacher_weights[job.teacher])
        return
    weights = _teacher_weights(spec, job) if job.kind in ("cache", ROW, CELL) else None
    if job.kind == "cache":
        method_cell = next(c for c in plan(spec) if c.row not in ("teacher", "student")
                           and (c.teacher, c.seed) == (job.teacher, job.seed))
        _fill_teacher_cache(spec, replace(_cell_config(spec, method_cell, weights), progress=progress))
        return
    left = [c for c in job.cells if not os.path.isfile(os.path.join(c.out, "summary.json"))]
    if job.kind in (ROW, CELL) and left and not os.path.isfile(done_marker(spec.out, job.after[1])):
        raise NotReady(f"job {job.name} waits for the teacher cache of {job.teacher}, seed {job.seed} (no "
                       f"{done_marker(spec.out, job.after[1])}): run job {job.after[1]} first")
    cfgs = [replace(_cell_config(spec, c, weights), progress=progress) for c in job.cells]
    run_cells(cfgs, [c.label for c in job.cells], "grid", one_pass=one_pass)


def _teacher_weights(spec: GridSpec, job: Job) -> str:
    """The teacher checkpoint of a cache or method job: --teacher-weights, else the finished teacher cell's."""
    if job.teacher in spec.teacher_weights:
        return spec.teacher_weights[job.teacher]
    summary = os.path.join(spec.out, "teachers", job.teacher, "summary.json")
    if not os.path.isfile(summary):
        raise NotReady(f"job {job.name} waits for teacher {job.teacher} (no {summary}): run job "
                       f"teacher-{job.teacher} first")
    import json

    with open(summary) as f:
        return json.load(f)["checkpoint"]


# ---- --plan DIR -----------------------------------------------------------------------------------------
def write_plan(spec: GridSpec, folder: str, fastkd: Sequence[str], grid_args: Sequence[str],
               gpus_per_job: str = "1", one_pass: bool = True) -> List[Job]:
    """Write ``folder``/jobs.txt and ``folder``/submit.sh for ``spec`` (checked here), and the grid's spec in its
    --out; ``fastkd``: the command that runs fastkd, ``grid_args``: the grid's own options (given to every
    job); the method cells one job per row with ``one_pass``, else one per cell. Nothing is trained."""
    spec = spec.check()
    gpus = str(gpus_per_job).strip()
    if not re.fullmatch(r"[A-Za-z0-9_:.-]*", gpus):
        raise UserError(f"--gpus-per-job {gpus_per_job!r}: give a count or TYPE:COUNT (e.g. 1, a100:2), or 0 for none")
    os.makedirs(spec.out, exist_ok=True)
    _save_spec(spec)
    folder = os.path.abspath(folder)
    os.makedirs(os.path.join(folder, "logs"), exist_ok=True)
    todo = jobs(spec, ROW if one_pass else CELL)
    commands = {j.name: _command(j, spec, fastkd, grid_args, gpu_count(gpus)) for j in todo}
    lines = ["# fastkd grid plan: one job a line, in dependency order: NAME<TAB>AFTER (its jobs, comma list; - for "
             "none)<TAB>COMMAND",
             f"# run the commands from {os.getcwd()} (submit.sh does); e.g. grep -v '^#' jobs.txt | "
             "while IFS=$'\\t' read -r name after cmd; do bash -c \"$cmd\" </dev/null || break; done"]
    lines += [f"{j.name}\t{','.join(j.after) or '-'}\t{commands[j.name]}" for j in todo]
    atomic_write_text(os.path.join(folder, "jobs.txt"), "\n".join(lines) + "\n")
    atomic_write_text(os.path.join(folder, "submit.sh"), _submit_script(todo, commands, folder, gpus))
    os.chmod(os.path.join(folder, "submit.sh"), 0o755)
    log(f"[grid] plan of {len(todo)} jobs in {folder}: run `bash {os.path.join(folder, 'submit.sh')}` to submit them "
        f"to SLURM, or the lines of jobs.txt in order; `fastkd grid --status {spec.out}` shows progress")
    return todo


def gpu_count(gpus: str) -> int:
    """The GPUs a job gets from ``--gpus-per-job``: a count, TYPE:COUNT, a TYPE alone (1), or none ("" or 0)."""
    last = gpus.rpartition(":")[2]
    return int(last) if last.isdigit() else (1 if gpus else 0)


def _command(job: Job, spec: GridSpec, fastkd: Sequence[str], grid_args: Sequence[str], gpus: int) -> str:
    """A job's command line; a job with 2 or more GPUs (but the report) runs under torchrun, a process per GPU on
    one node (DDP)."""
    if job.kind == "report":
        words = [*fastkd, "report", spec.out]
    else:
        runner = fastkd if gpus < 2 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          f"--nproc-per-node={gpus}", "-m", "fastkd"]
        words = [*runner, "grid", "--job", job.name, *grid_args]
    return " ".join(shlex.quote(str(w)) for w in words)


def _submit_script(todo: List[Job], commands: dict, folder: str, gpus: str) -> str:
    gpu_line = [f"#SBATCH --gpus={gpus}"] if gpus not in ("", "0") else []
    head = ["#!/bin/bash", *gpu_line, f"#SBATCH --output={folder}/logs/%x-%j.out", f"#SBATCH --chdir={os.getcwd()}",
            "# Written by `fastkd grid --plan`. `bash submit.sh` submits every job of the grid with sbatch, each",
            "# after the jobs it needs (--dependency=afterok:); sbatch runs this same file as each job's script",
            "# (`submit.sh --run COMMAND...`: srun COMMAND). Extra sbatch options: SBATCH_EXTRA=\"--partition=x\".",
            "set -euo pipefail",
            'if [ "${1:-}" = "--run" ]; then shift; exec srun "$@"; fi',
            f"cd {shlex.quote(os.getcwd())}",
            f"SCRIPT={shlex.quote(os.path.join(folder, 'submit.sh'))}",
            "declare -A JOB",
            "submit() {  # NAME DEPENDENCY COMMAND...",
            '  local name=$1 dep=$2; shift 2',
            '  JOB[$name]=$(sbatch --parsable --job-name="$name" ${dep:+--dependency=$dep} ${SBATCH_EXTRA:-} '
            '"$SCRIPT" --run "$@")',
            '  echo "$name: ${JOB[$name]}"',
            "}"]
    body = []
    for j in todo:
        kind = "afterany" if j.kind == "report" else "afterok"
        dep = f"{kind}:" + ":".join(f"${{JOB[{a}]}}" for a in j.after) if j.after else ""
        body.append(f"submit {j.name} {shlex.quote(dep) if not dep else dep} {commands[j.name]}")
    return "\n".join(head + body) + "\n"
