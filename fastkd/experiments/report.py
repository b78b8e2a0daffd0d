"""``fastkd report DIR``: the grid table and plots from finished run folders, without training.

Every ``summary.json`` under DIR is one run (of ``grid``, ``compare`` or ``train``). A run with a teacher
is a distilled cell: column = its teacher, row = its method. A cross-entropy run is a baseline: the
*student baseline* row when its model is the distilled student, the *teacher baseline* row of the column
named by its model (a grid's ``teachers/`` folder holds teacher baselines only). With a ``grid-spec.json`` (written by ``fastkd grid``) columns and rows follow the
grid's order and its recipe's published numbers are printed beside the cells; otherwise they follow the
folder order. Each cell is the mean ± sample standard deviation over seeds (n - 1 in the denominator).

Writes ``report.md`` (top-1 table, cost table, notes), ``report.csv`` (one line per cell: seeds, mean,
spread, per-seed values, train seconds, images/s), ``report.json`` and ``plots/*.png``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

from fastkd.atomic import atomic_write_text
from fastkd.errors import UserError
from fastkd.tables import format_table
from fastkd.safe_paths import plain_name

SPEC_FILE = "grid-spec.json"  # written by a grid: column order, rows, published values


NO_TEACHER = "no-teacher"  # the one column of baselines-only folders


class Run(NamedTuple):
    path: str
    student: str
    teacher: Optional[str]
    method: str
    seed: Optional[int]
    top1: float
    train_seconds: Optional[float]
    images_per_s: Optional[float]
    curve: List[Tuple[int, float]]  # (epoch, eval top-1) for every evaluated epoch
    grid_teacher: bool  # under a grid's teachers/ folder: a teacher baseline even if the student has its arch


class Stats(NamedTuple):
    mean: float
    spread: float
    values: List[float]
    seeds: List[Optional[int]]
    train_seconds: Optional[float]
    images_per_s: Optional[float]

    def text(self) -> str:
        return f"{self.mean:.2f}" if len(self.values) == 1 else f"{self.mean:.2f} ± {self.spread:.2f}"


class Table(NamedTuple):
    student: str
    columns: List[str]  # teachers
    rows: List[str]  # "teacher", "student", then methods
    cells: Dict[Tuple[str, str], List[Run]]  # (row, column) -> runs (one per seed)
    published: Optional[dict]

    def stats(self, row: str, column: str) -> Optional[Stats]:
        runs = sorted(self.cells.get((row, column), []), key=lambda r: (r.seed is None, r.seed))
        if not runs:
            return None
        vals = [r.top1 for r in runs]
        secs = [r.train_seconds for r in runs if r.train_seconds is not None]
        ips = [r.images_per_s for r in runs if r.images_per_s is not None]
        return Stats(statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, vals,
                     [r.seed for r in runs], statistics.mean(secs) if secs else None,
                     statistics.mean(ips) if ips else None)

    def label(self, row: str) -> str:
        return {"teacher": "teacher baseline", "student": f"student baseline ({self.student})"}.get(row, row)


def _curve(run_dir: str) -> List[Tuple[int, float]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            key = next((k for k in row if k.endswith("_top1") and not k.startswith("train_")), None)
            if key is not None:
                out.append((int(row["epoch"]), float(row[key])))
    return out


def collect(root: str) -> List[Run]:
    """Every finished run under ``root`` (folders in sorted order)."""
    runs = []
    for here, dirs, files in os.walk(root):
        dirs.sort()
        if "summary.json" not in files:
            continue
        where = os.path.join(here, "summary.json")
        with open(where) as f:
            s = json.load(f)
        if not isinstance(s, dict) or s.get("top1") is None or not s.get("student"):
            continue
        # names that become plot file names (plots/curves-<teacher>.png) and table keys: plain names only
        plain_name(s["student"], "student", where)
        if s.get("teacher") is not None:
            plain_name(s["teacher"], "teacher", where)
        if s.get("method"):
            plain_name(s["method"], "method", where)
        runs.append(Run(here, s["student"], s.get("teacher"), s.get("method") or "ce", s.get("seed"),
                        float(s["top1"]), s.get("train_seconds"), s.get("train_images_per_s"), _curve(here),
                        os.path.relpath(here, root).split(os.sep)[0] == "teachers"))
    return runs


def build_tables(root: str) -> List[Table]:
    """One table per distilled student found under ``root``."""
    if not os.path.isdir(root):
        raise UserError(f"{root} is not a folder; give a folder written by fastkd grid, compare or train")
    runs = collect(root)
    if not runs:
        raise UserError(f"no finished run (summary.json) under {root}; run fastkd grid/compare/train there first")
    spec = _spec(root)
    distilled = [r for r in runs if r.teacher]
    ce = [r for r in runs if not r.teacher]
    students = list(dict.fromkeys(([spec["student"]] if spec else []) + [r.student for r in distilled]))
    if not students:  # baselines only: one table per model
        students = list(dict.fromkeys(r.student for r in ce))
    tables = []
    for student in students:
        mine = [r for r in distilled if r.student == student]
        columns = list(dict.fromkeys((spec["teachers"] if spec else []) + [r.teacher for r in mine]))
        methods = list(dict.fromkeys((spec["methods"] if spec else []) + [r.method for r in mine]))
        published = spec.get("published") if spec else None
        cells: Dict[Tuple[str, str], List[Run]] = {}
        seen = set()
        for run in ce + mine:
            if run.teacher:
                keys = [(run.method, run.teacher)]
            elif run.grid_teacher:
                keys = [("teacher", run.student)] if run.student in columns else []
            elif run.student == student:
                keys = [("student", c) for c in columns or [NO_TEACHER]]
            else:
                keys = [("teacher", run.student)] if run.student in columns else []
            for key in keys:
                if (key, run.seed) in seen:
                    print(f"[report] {run.path}: a second run for {key[0]} / {key[1]} / seed {run.seed}; "
                          "ignored", file=sys.stderr)
                    continue
                seen.add((key, run.seed))
                cells.setdefault(key, []).append(run)
        extra = [r for r in (published or {}).get("top1", {}) if r not in ("teacher", "student") + tuple(methods)]
        rows = [r for r in ["teacher", "student"] + methods + extra
                if any(k[0] == r for k in cells) or r in (published or {}).get("top1", {})]
        tables.append(Table(student, columns or [NO_TEACHER], rows, cells, published))
    return tables


def _spec(root: str) -> Optional[dict]:
    path = os.path.join(root, SPEC_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        spec = json.load(f)
    if not isinstance(spec, dict) or not isinstance(spec.get("teachers"), list) or not isinstance(spec.get("methods"), list):
        raise UserError(f"{path} is not a grid spec (teachers and methods lists); fix or remove that file")
    plain_name(spec.get("student"), "student", path)
    for t in spec["teachers"]:
        plain_name(t, "teacher", path)
    for m in spec["methods"]:
        plain_name(m, "method", path)
    return spec


def markdown(table: Table) -> str:
    pub = table.published
    headers = ["", *table.columns] + ([f"{pub.get('label', 'published')} ({pub['teacher']})"] if pub else [])
    top1, cost = [], []
    for row in table.rows:
        stats = [table.stats(row, c) for c in table.columns]
        line = [table.label(row)] + [s.text() if s else "-" for s in stats]
        if pub:
            value = pub["top1"].get(row)
            line.append(f"{value:.2f}" if value is not None else "-")
        top1.append(line)
        cost.append([table.label(row)] + ["-" if s is None or s.train_seconds is None else
                                          f"{s.train_seconds:.1f} s, {s.images_per_s:,.0f} img/s" for s in stats])
    seeds = sorted({r.seed for runs in table.cells.values() for r in runs if r.seed is not None})
    parts = [f"Top-1 % of {table.student} (columns: teachers; mean ± standard deviation over seeds "
             f"{', '.join(map(str, seeds))}):", "", format_table(headers, top1, markdown=True), "",
             "Training time per cell (seconds summed over epochs, mean over seeds) and images/s:", "",
             format_table(["", *table.columns], cost, markdown=True)]
    if pub:
        parts += ["", f"Published: {pub.get('source', '')}", "", f"Note: {pub['note']}" if pub.get("note") else ""]
    return "\n".join(parts).rstrip() + "\n"


def csv_text(tables: List[Table]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", "row", "teacher", "n", "top1_mean", "top1_spread", "top1_per_seed", "seeds",
                "train_seconds_mean", "images_per_s_mean"])
    for t in tables:
        for row in t.rows:
            for col in t.columns:
                s = t.stats(row, col)
                if s is not None:
                    w.writerow([t.student, row, col, len(s.values), f"{s.mean:.4f}", f"{s.spread:.4f}",
                                " ".join(f"{v:.4f}" for v in s.values), " ".join(str(x) for x in s.seeds),
                                "" if s.train_seconds is None else f"{s.train_seconds:.2f}",
                                "" if s.images_per_s is None else f"{s.images_per_s:.1f}"])
    return buf.getvalue()


def write_report(root: str, quiet: bool = False) -> dict:
    """Write report.md, report.csv, report.json and plots/ under ``root``; returns what was written."""
    from fastkd.experiments.plots import plot_bars, plot_curves

    tables = build_tables(root)
    text = "\n".join(markdown(t) for t in tables)
    plots = []
    for t in tables:
        suffix = "" if len(tables) == 1 else f"-{t.student}"
        plots.append(plot_bars(t, os.path.join(root, "plots", f"bars{suffix}.png")))
        plots += plot_curves(t, os.path.join(root, "plots"), suffix)
    result = {"markdown": text, "plots": [os.path.relpath(p, root) for p in plots],
              "tables": [{"student": t.student, "columns": t.columns, "rows": t.rows,
                          "cells": {f"{r}/{c}": t.stats(r, c)._asdict() for r in t.rows for c in t.columns
                                    if t.stats(r, c)}} for t in tables]}
    for name, content in (("report.md", text), ("report.csv", csv_text(tables)),
                          ("report.json", json.dumps(result, indent=2))):
        atomic_write_text(os.path.join(root, name), content)
    if not quiet:
        print(text)
    return result
