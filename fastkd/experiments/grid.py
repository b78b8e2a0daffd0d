"""``fastkd grid``: the seed's experiment table from one command.

Teachers are the columns; the rows are the teacher baseline, the student baseline and one row per
method, each over several seeds. Every cell is a normal run folder under ``out``::

    teachers/<teacher>/             the teacher, trained once (seed 0) or evaluated from
                                    --teacher-weights (summary.json only)
    student/seed<k>/                the student baseline (cross-entropy), shared by every column
    <teacher>/<method>/seed<k>/     the student distilled from that teacher

Cells reuse :func:`fastkd.experiments.runs.run_or_reuse`: a finished cell is read back, a stopped one resumes from
its last checkpoint, so the grid survives being stopped and restarted with the same command. The table
and plots are written by :func:`fastkd.experiments.report.write_report`, the same code as ``fastkd report``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, NamedTuple, Optional

from fastkd.log import log
from fastkd.atomic import atomic_write_json
from fastkd.errors import UserError
from fastkd.experiments.report import SPEC_FILE, write_report
from fastkd.experiments.runs import cell_tensorboard, run_cells, run_or_reuse
from fastkd.train.config import TrainConfig
from fastkd.train.tensorboard_log import require as require_tensorboard

_NOT_SETTABLE = {"data", "out", "student", "teacher", "teacher_weights", "method", "method_options", "seed"}


@dataclass
class GridSpec:
    data: str
    out: str
    teachers: List[str]
    student: str
    methods: List[str]
    seeds: List[int]
    teacher_weights: Dict[str, str] = field(default_factory=dict)
    train: Dict[str, object] = field(default_factory=dict)  # TrainConfig fields for every run
    teacher_train: Dict[str, object] = field(default_factory=dict)  # ... over `train`, teachers only
    student_train: Dict[str, object] = field(default_factory=dict)  # ... student baseline + distilled cells
    method_options: Dict[str, Dict[str, object]] = field(default_factory=dict)
    published: Optional[dict] = None
    description: str = ""

    def check(self) -> "GridSpec":
        """Canonical model/method names; unknown names and TrainConfig fields fail before any training."""
        from fastkd.methods import METHODS, parse_methods
        from fastkd.models import canonical_name

        fields = {f.name for f in dataclasses.fields(TrainConfig)} - _NOT_SETTABLE
        for where, opts in (("train", self.train), ("teacher_train", self.teacher_train),
                            ("student_train", self.student_train)):
            bad = set(opts) - fields
            if bad:
                raise UserError(f"grid {where} has unknown option(s) {', '.join(sorted(bad))}; "
                                f"allowed: {', '.join(sorted(fields))}")
        if not (self.teachers and self.methods and self.seeds):
            raise UserError("a grid needs at least one teacher, one method and one seed")
        teachers = [canonical_name(t) for t in self.teachers]
        weights = {canonical_name(t): p for t, p in self.teacher_weights.items()}
        for name, path in weights.items():
            if name not in teachers:
                raise UserError(f"--teacher-weights {name}=... but {name} is not among --teachers "
                                f"{','.join(teachers)}")
            if not os.path.isfile(path):
                raise UserError(f"--teacher-weights {name}={path}: no such file")
        methods = []
        for m in self.methods:
            parse_methods(m, self.method_options)  # unknown methods / options fail here
            canon = "+".join(METHODS.canonical(p.strip()) for p in m.split("+") if p.strip())
            if canon != "ce" and canon not in methods:  # ce is the student baseline row
                methods.append(canon)
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds {self.seeds} repeats a seed")
        spec = replace(self, teachers=list(dict.fromkeys(teachers)), student=canonical_name(self.student),
                       methods=methods, teacher_weights=weights)
        for cell in plan(spec):  # every cell's option values (TrainConfig's checks), before any cell trains
            require_tensorboard(_cell_config(spec, cell, None).tensorboard)
        return spec


class Cell(NamedTuple):
    row: str  # "teacher", "student" or a method
    teacher: Optional[str]
    seed: int
    out: str

    @property
    def label(self) -> str:
        what = {"teacher": f"teacher {self.teacher}", "student": "student baseline"}.get(
            self.row, f"{self.teacher} -> {self.row}")
        return what if self.row == "teacher" else f"{what}, seed {self.seed}"


def plan(spec: GridSpec) -> List[Cell]:
    """Every cell in run order: teachers first (the method cells need them), then the baseline, then methods."""
    # teachers with seed 0 whatever the seeds, so adding seeds later reuses them
    cells = [Cell("teacher", t, 0, os.path.join(spec.out, "teachers", t)) for t in spec.teachers]
    cells += [Cell("student", None, s, os.path.join(spec.out, "student", f"seed{s}")) for s in spec.seeds]
    cells += [Cell(m, t, s, os.path.join(spec.out, t, m, f"seed{s}"))
              for t in spec.teachers for m in spec.methods for s in spec.seeds]
    return cells


def _cell_config(spec: GridSpec, cell: Cell, teacher_weights: Optional[str]) -> TrainConfig:
    """The TrainConfig of one cell: the only place a grid run's options are put together. With
    ``--tensorboard DIR`` the cell's events go to DIR/<its run folder under the grid's>, e.g. DIR/teachers/<t>."""
    cfg = _cell_options(spec, cell, teacher_weights)
    return cell_tensorboard(cfg, spec.out, cfg.tensorboard)


def _cell_options(spec: GridSpec, cell: Cell, teacher_weights: Optional[str]) -> TrainConfig:
    base = TrainConfig(data=spec.data, out=cell.out, student=spec.student, seed=cell.seed, **spec.train)
    if cell.row == "teacher":
        return replace(base, student=cell.teacher, **spec.teacher_train)
    base = replace(base, **spec.student_train)
    if cell.row == "student":
        return base
    options = {m: o for m, o in spec.method_options.items() if m in cell.row.split("+")}
    # every method cell of one teacher and seed shares one teacher-output cache (its key holds the seed), filled
    # for all the grid's methods at once (_fill_teacher_cache); maps beyond --cache-budget run online
    cache = os.path.join(spec.out, "teacher-cache", cell.teacher, f"seed{cell.seed}")
    return replace(base, teacher=cell.teacher, teacher_weights=teacher_weights, method=cell.row,
                   method_options=options, teacher_cache=cache)


class Progress:
    """Lines on stderr over the whole grid: cells done, time per trained cell, time left."""

    def __init__(self, total: int):
        self.total, self.done, self.trained_s, self.trained = total, 0, 0.0, 0

    def finished(self, cell: Cell, seconds: Optional[float]) -> None:
        self.done += 1
        if seconds is not None:
            self.trained_s, self.trained = self.trained_s + seconds, self.trained + 1
        left = self.total - self.done
        per = self.trained_s / self.trained if self.trained else None
        took = "reused" if seconds is None else f"{seconds:.1f} s"
        eta = f", ~{per * left / 60:.1f} min left" if per is not None and left else ""
        rate = f"; {per:.1f} s per trained cell" if per is not None else ""
        log(f"[grid] {self.done}/{self.total} cells done ({cell.label}: {took}){rate}{eta}")


def run_grid(spec: GridSpec, progress: bool = True, one_pass: bool = True) -> dict:
    """Train (or reuse) every cell of ``spec``, then write the table and plots; returns the report. With
    ``one_pass`` the method cells of one (teacher, seed) train in one pass over the data
    (:func:`fastkd.experiments.runs.run_cells`)."""
    spec = spec.check()
    os.makedirs(spec.out, exist_ok=True)
    _save_spec(spec)
    cells, weights = plan(spec), dict(spec.teacher_weights)
    bar, rows = Progress(len(cells)), {}
    for cell in cells:
        if cell.row in ("teacher", "student"):
            done, start = os.path.isfile(os.path.join(cell.out, "summary.json")), time.time()
            if cell.row == "teacher" and cell.teacher in spec.teacher_weights:
                _evaluate_teacher(spec, cell, spec.teacher_weights[cell.teacher])
            else:
                summary = run_or_reuse(replace(_cell_config(spec, cell, weights.get(cell.teacher)), progress=progress),
                                       cell.label, "grid")
                if cell.row == "teacher":
                    weights[cell.teacher] = summary["checkpoint"]
            bar.finished(cell, None if done else time.time() - start)
        else:
            rows.setdefault((cell.teacher, cell.seed), []).append(cell)
    for row in rows.values():  # the method cells of one teacher and seed: one cache, one pass over the data
        cfgs = [replace(_cell_config(spec, cell, weights.get(cell.teacher)), progress=progress) for cell in row]
        done = [os.path.isfile(os.path.join(cell.out, "summary.json")) for cell in row]
        start = time.time()
        if not all(done):
            _fill_teacher_cache(spec, cfgs[0])
        run_cells(cfgs, [cell.label for cell in row], "grid", one_pass=one_pass)
        trained = sum(not d for d in done)
        for cell, d in zip(row, done):
            bar.finished(cell, None if d else (time.time() - start) / trained)
    return write_report(spec.out)


def _fill_teacher_cache(spec: GridSpec, cfg: TrainConfig) -> None:
    """Before the first method cell of a (teacher, seed) that is left to train: fill its teacher cache with
    every signal that any method of the grid needs, in one teacher pass at the cells' batch size (``fastkd
    cache build``), so that no method cell runs the teacher (a cell whose signals are all there never loads
    it). Nothing to do when the cache already holds them all; maps beyond ``--cache-budget`` stay online."""
    from fastkd.train.cache_fill import build_cache

    parts = list(dict.fromkeys(part for m in spec.methods for part in m.split("+")))
    union = "+".join(parts)
    options = {m: o for m, o in spec.method_options.items() if m in parts}
    log(f"[grid] teacher cache for {cfg.teacher}, seed {cfg.seed}: {union}")
    build_cache(replace(cfg, method=union, method_options=options), batch_size=cfg.batch_size, progress=cfg.progress)


def _save_spec(spec: GridSpec) -> None:
    """``grid-spec.json``: what the report needs to lay out the table (column order, rows, published)."""
    atomic_write_json(os.path.join(spec.out, SPEC_FILE), dataclasses.asdict(spec))


def _evaluate_teacher(spec: GridSpec, cell: Cell, path: str) -> dict:
    """The teacher-baseline cell of a teacher brought with ``--teacher-weights``: top-1 of those weights on
    the evaluation split, written as the cell's ``summary.json`` (once)."""
    done = os.path.join(cell.out, "summary.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    from fastkd.train.build import evaluate_weights

    result = evaluate_weights(_cell_config(spec, cell, None), path)
    summary = {"student": cell.teacher, "teacher": None, "method": "ce", "epochs": None, "seed": None,
               "top1": result["top1"], "top5": result.get("top5"), "checkpoint": os.path.abspath(path),
               "evaluated_from": os.path.abspath(path)}
    os.makedirs(cell.out, exist_ok=True)
    atomic_write_json(done, summary)
    log(f"[grid] teacher {cell.teacher}: {summary['top1']:.2f} top-1 from {path}")
    return summary
