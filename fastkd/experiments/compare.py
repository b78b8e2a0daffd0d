"""``fastkd compare``: one student distilled by several methods over several seeds, as one table.

Every (method, seed) cell is a normal run folder ``<out>/<method>/seed<k>``; a cell whose
``summary.json`` exists is reused, so an interrupted comparison resumes cell by cell.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import replace
from typing import Sequence

from fastkd.methods import METHODS
from fastkd.tables import format_table
from fastkd.experiments.runs import cell_tensorboard, run_cells, write_results
from fastkd.train.config import TrainConfig
from fastkd.train.tensorboard_log import require as require_tensorboard

HEADERS = ["method", "top-1 mean %", "top-1 std", "seeds", "per-seed top-1 %", "train s (mean)"]


def run_compare(base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: str,
                one_pass: bool = True) -> dict:
    """Every (method, seed) cell; with ``one_pass`` the cells of one seed train in one pass over the data."""
    require_tensorboard(base.tensorboard)  # before the first cell
    keys, cfgs = [], []
    for method in methods:
        for seed in seeds:
            uses_teacher = method != "ce"
            mine = {METHODS.canonical(m.strip()) for m in method.split("+")}  # --opt of the methods this cell uses
            options = {m: o for m, o in base.method_options.items() if m in mine}
            cfg = replace(base, out=os.path.join(out, method, f"seed{seed}"), method=method, seed=seed,
                          method_options=options,
                          teacher=base.teacher if uses_teacher else None,
                          teacher_weights=base.teacher_weights if uses_teacher else None)
            keys.append((method, seed))
            cfgs.append(cell_tensorboard(cfg, out, base.tensorboard))  # <tensorboard>/<method>/seed<k>
    summaries = run_cells(cfgs, [f"{m}, seed {s}" for m, s in keys], "compare", keep_diverged=True, one_pass=one_pass)
    cells = dict(zip(keys, summaries))
    rows = [_row(method, [cells[(method, s)] for s in seeds]) for method in methods]
    result = {"student": base.student, "teacher_weights": base.teacher_weights, "data": base.data,
              "seeds": list(seeds), "epochs": base.epochs, "res": base.res, "method_options": base.method_options,
              "cells": {f"{m}/seed{s}": v for (m, s), v in cells.items()},
              "table": format_table(HEADERS, rows, markdown=True)}
    write_results(out, "compare", result, format_table(HEADERS, rows))
    return result


def _row(method: str, cells: Sequence[dict]) -> list:
    """One table row: mean, spread and time over the seeds that finished; a diverged seed shows as
    ``diverged (epoch E)`` among the per-seed values and is left out of the mean (``seeds`` counts the
    finished ones)."""
    done = [c for c in cells if c.get("diverged") is None]
    accs, secs = [c["top1"] for c in done], [c["train_seconds"] for c in done]
    per_seed = " / ".join(f"{c['top1']:.2f}" if c.get("diverged") is None else f"diverged (epoch {c['diverged']['epoch']})"
                          for c in cells)
    spread = statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None)
    return [method, statistics.mean(accs) if accs else None, spread, len(done), per_seed,
            statistics.mean(secs) if secs else None]
