"""``fastkd grid --status OUT``: where a grid stands, read from its folders only (run by hand or as jobs).

Every cell of the grid (its ``grid-spec.json``) is *done* (``summary.json``, or a ``diverged.json`` record),
*running* (its run folder's lock or its job's lock is held: the holder's pid and host are written in the lock
file; on this host the pid is checked alive) or *waiting* (not started, or stopped part-way: epochs done so far
from ``metrics.jsonl``). Prints a line per row (done / running / waiting), a line per cell not done and per finished
cell its train time (``summary.json``), and the time left: the mean time of a finished cell x the cells left.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
from typing import List, Optional

from fastkd.errors import UserError
from fastkd.experiments.grid import Cell, GridSpec, plan
from fastkd.experiments.grid_plan import job_locks, lock_holder
from fastkd.experiments.report import SPEC_FILE
from fastkd.tables import format_table


def _read(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _where(folders: List[str]) -> Optional[dict]:
    """The holder of a lock file in ``folders`` (a live one first): pid, host, and whether it is alive (None: on
    another host, not checked; False: a stale lock of a process gone); None when there is no lock file."""
    found = None
    for folder in folders:
        held = lock_holder(folder)
        if held is None:
            continue
        pid, host, text = held
        alive = _alive(pid) if pid is not None and host == socket.gethostname() else None
        found = {"pid": pid, "host": host, "alive": alive, "text": text}
        if alive is not False:
            return found
    return found


def _epochs_done(cell: Cell) -> int:
    try:
        with open(os.path.join(cell.out, "metrics.jsonl")) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def cell_state(spec: GridSpec, cell: Cell, locks: List[str]) -> dict:
    """{"cell", "row", "state": done|running|waiting, "seconds" (done), "where" (running), "epochs" (so far)};
    ``locks``: the lock folders of the jobs that may train ``cell`` (:func:`job_locks`)."""
    summary = _read(os.path.join(cell.out, "summary.json"))
    state = {"cell": os.path.relpath(cell.out, spec.out), "row": cell.row, "label": cell.label}
    if summary is not None or os.path.isfile(os.path.join(cell.out, "diverged.json")):
        secs = (summary or {}).get("train_seconds")
        return {**state, "state": "done", "seconds": float(secs) if secs is not None else None}
    # the cell's run folder, then the lock of the job that trains it (a plan by row or by cell)
    where = _where([cell.out, *locks])
    config = _read(os.path.join(cell.out, "config.json")) or {}
    epochs = {"epochs": _epochs_done(cell), "epochs_total": config.get("epochs")}
    if where is not None and where["alive"] is not False:
        return {**state, "state": "running", "where": where, **epochs}
    return {**state, "state": "waiting", **epochs, "stale": where}


def grid_status(out: str) -> dict:
    """The state of every cell of the grid in ``out``, the counts per row and the estimated time left."""
    data = _read(os.path.join(out, SPEC_FILE))
    if data is None:
        raise UserError(f"{out} holds no {SPEC_FILE}; give the --out folder of a `fastkd grid` (or of its --plan)")
    spec = GridSpec(**{**data, "out": out})
    locks = job_locks(spec)
    cells = [cell_state(spec, c, locks[c]) for c in plan(spec)]
    rows = {}
    for c in cells:
        rows.setdefault(c["row"], {"done": 0, "running": 0, "waiting": 0})[c["state"]] += 1
    times = [c["seconds"] for c in cells if c["state"] == "done" and c.get("seconds") is not None]
    mean = statistics.mean(times) if times else None
    left = sum(c["state"] != "done" for c in cells)
    return {"cells": cells, "rows": rows, "mean_seconds": mean, "cells_left": left,
            "seconds_left": mean * left if mean is not None else None}


def _minutes(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _detail(c: dict) -> str:
    if c["state"] == "done":
        return _minutes(c.get("seconds")) if c.get("seconds") is not None else "evaluated (no training)"
    so_far = f"{c['epochs']}/{c.get('epochs_total') or '?'} epochs" if c.get("epochs") else "not started"
    if c["state"] == "running":
        w = c["where"]
        alive = {True: "alive", False: "gone", None: "not checked from here"}[w["alive"]]
        host = f"pid {w['pid']}@{w['host']} ({alive})" if w["pid"] is not None else w["text"]
        return f"{host}, {so_far}"
    stale = c.get("stale")
    return so_far + (f" (stale lock of pid {stale['pid']}@{stale['host']}, process gone)" if stale else "")


def format_status(out: str, status: dict) -> str:
    total = len(status["cells"])
    done = sum(c["state"] == "done" for c in status["cells"])
    lines = [f"grid {out}: {done}/{total} cells done", "",
             format_table(["row", "done", "running", "waiting"],
                          [[r, n["done"], n["running"], n["waiting"]] for r, n in status["rows"].items()]), "",
             format_table(["cell", "state", "time / where"],
                          [[c["cell"], c["state"], _detail(c)] for c in status["cells"]]), ""]
    per = status["mean_seconds"]
    if not status["cells_left"]:
        lines.append(f"all cells done; {_minutes(per)} per trained cell" if per is not None else "all cells done")
    elif per is None:
        lines.append(f"{status['cells_left']} cells left; no finished cell timed yet, no estimate")
    else:
        lines.append(f"{_minutes(per)} per finished cell; {status['cells_left']} cells left: "
                     f"~{_minutes(status['seconds_left'])} left (one at a time)")
    return "\n".join(lines)
