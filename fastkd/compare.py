"""``fastkd compare``: one student distilled by several methods over several seeds, as one table.

Every (method, seed) cell is a normal run folder ``<out>/<method>/seed<k>``; a cell whose
``summary.json`` exists is reused, so an interrupted comparison resumes cell by cell.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from dataclasses import replace
from typing import List, Sequence

from fastkd.report import format_table
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

HEADERS = ["method", "top-1 mean %", "top-1 std", "seeds", "per-seed top-1 %", "train s (mean)"]


def run_compare(base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: str) -> dict:
    cells = {}
    for method in methods:
        for seed in seeds:
            run = os.path.join(out, method, f"seed{seed}")
            done = os.path.join(run, "summary.json")
            if os.path.isfile(done):
                with open(done) as f:
                    cells[(method, seed)] = json.load(f)
                continue
            shutil.rmtree(run, ignore_errors=True)  # an unfinished cell restarts
            print(f"[compare] {method}, seed {seed}", file=sys.stderr, flush=True)
            uses_teacher = method != "ce"
            cfg = replace(base, out=run, method=method, seed=seed,
                          teacher=base.teacher if uses_teacher else None,
                          teacher_weights=base.teacher_weights if uses_teacher else None)
            cells[(method, seed)] = train(cfg)
    rows: List[list] = []
    for method in methods:
        accs = [cells[(method, s)]["top1"] for s in seeds]
        secs = [cells[(method, s)]["train_seconds"] for s in seeds]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append([method, statistics.mean(accs), spread, len(seeds), " / ".join(f"{a:.2f}" for a in accs),
                     statistics.mean(secs)])
    result = {"student": base.student, "teacher_weights": base.teacher_weights, "data": base.data,
              "seeds": list(seeds), "epochs": base.epochs, "res": base.res,
              "cells": {f"{m}/seed{s}": v for (m, s), v in cells.items()},
              "table": format_table(HEADERS, rows, markdown=True)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(result["table"] + "\n")
    print(format_table(HEADERS, rows))
    return result
