"""What one pass over the data saves a grid row: N method cells (default kd, at, rkd, pkt into shufflenet_v2_x0_5)
trained one after another vs in one pass (``--one-pass``), both reading one teacher cache filled beforehand for all
of them, in one run on one machine.

Per set, in this order: the cache filled for the union of the methods (not timed); the cells one after another
(``train``); the same cells as one row (``fastkd.train.one_pass``, what ``fastkd grid`` runs); one pass of the
training loader alone over the same epochs (decode and augmentation, nothing trained); the student alone
(cross-entropy) on the memory backend, whose views are already decoded in memory. Training seconds are those of
the epochs after the first (warm-up: worker start, first allocations), summed over the cells (a row's cell is
charged its own steps and a share of the loader's and the cache's time, so the sum is the row's time).

Reported: ``row / sequential`` (training seconds and whole-command wall, which adds model building, evaluation
and checkpoints), and the per-cell cost ``(row - loader pass) / N`` against the student-alone epoch.
Targets (issue 24): row <= 0.85x sequential at 112 px on the 2-core CPU, <= 0.5x on a GPU; per-cell cost within
1.1x of the student alone.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace
from typing import List, Optional

import torch

from fastkd.atomic import atomic_write_json
from fastkd.tables import format_table

from .machine import machine_info

METHODS = ["kd", "at", "rkd", "pkt"]
HEADERS = ["set", "res", "cells", "sequential s/epoch", "one-pass s/epoch", "row / seq", "wall row / seq",
           "loader s/epoch", "per cell s/epoch", "student alone s/epoch", "per cell / alone"]


def _epoch_seconds(out: str) -> List[float]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["train_seconds"] for line in f if line.strip()]


def _after_warmup(outs: List[str]) -> float:
    """Training seconds per epoch after the first, summed over the cells ``outs``."""
    per_cell = [_epoch_seconds(o) for o in outs]
    return sum(statistics.mean(s[1:] if len(s) > 1 else s) for s in per_cell)


def _loader_pass(cfg) -> float:
    """Seconds per epoch (after the first) of the run's training loader iterated alone (the loader ``build_run``
    makes for the run; nothing trained)."""
    from fastkd.train.build import build_run

    run = build_run(replace(cfg, method="ce", teacher=None, teacher_weights=None, teacher_cache=None), "train")
    seconds = []
    for epoch in range(cfg.epochs):
        started = time.time()
        for batch in run.train_loader.epoch(epoch):
            if batch.images.is_cuda:
                torch.cuda.synchronize()
        seconds.append(time.time() - started)
    run.close()
    run.train_loader.__dict__.pop("backend", None)  # its workers end now
    return statistics.mean(seconds[1:] if len(seconds) > 1 else seconds)


def run_set(name: str, data: str, teacher: str, teacher_weights: str, res: int, work: str, *,
            student: str = "shufflenet_v2_x0_5", methods=METHODS, epochs: int = 3, batch_size: int = 64,
            workers: int = 2, device: str = "cpu", backend: str = "torch") -> dict:
    from fastkd.train.cache_fill import build_cache
    from fastkd.train.one_pass import open_row
    from fastkd.train.config import TrainConfig
    from fastkd.train.trainer import train

    root = os.path.join(work, name)
    cache = os.path.join(root, "cache")
    base = TrainConfig(data=data, out="", student=student, teacher=teacher, teacher_weights=teacher_weights,
                       epochs=epochs, batch_size=batch_size, lr=0.05, res=res, workers=workers, device=device,
                       backend=backend, progress=False, eval_every=epochs, teacher_cache=cache)
    build_cache(replace(base, method="+".join(methods)), batch_size=batch_size, progress=False)
    walls, seconds, epochs_s = {}, {}, {}
    for mode in ("sequential", "one-pass"):
        cfgs = [replace(base, method=m, out=os.path.join(root, mode, m)) for m in methods]
        started = time.time()
        if mode == "sequential":
            for cfg in cfgs:
                train(cfg)
        else:  # what `fastkd grid` and `fastkd compare` run for a row (fresh folders: no resume)
            row = open_row(cfgs, [False] * len(cfgs), methods)
            if row is None:
                raise SystemExit("bench one-pass: the row does not fit in memory here (see the line above)")
            try:
                row.fit()
            finally:
                row.close()
        walls[mode], seconds[mode] = time.time() - started, _after_warmup([c.out for c in cfgs])
        epochs_s[mode] = {c.method: _epoch_seconds(c.out) for c in cfgs}  # every epoch, warm-up included
    loader = _loader_pass(base)
    alone_dir = os.path.join(root, "student-alone")
    train(replace(base, method="ce", teacher=None, teacher_weights=None, teacher_cache=None, backend="memory",
                  out=alone_dir))
    alone = _after_warmup([alone_dir])
    per_cell = (seconds["one-pass"] - loader) / len(methods)
    return {"set": name, "res": res, "cells": len(methods), "methods": list(methods), "student": student,
            "teacher": teacher, "epochs": epochs, "batch_size": batch_size, "workers": workers, "backend": backend,
            "sequential_s": seconds["sequential"], "one_pass_s": seconds["one-pass"],
            "ratio": seconds["one-pass"] / seconds["sequential"],
            "wall_sequential_s": walls["sequential"], "wall_one_pass_s": walls["one-pass"],
            "wall_ratio": walls["one-pass"] / walls["sequential"], "loader_s": loader, "per_cell_s": per_cell,
            "student_alone_s": alone, "per_cell_vs_alone": per_cell / alone, "epoch_seconds": epochs_s}


def random_teacher(name: str, classes: int, low_res: bool, res: int, path: str) -> str:
    """A random-initialised teacher saved as a state dict (the cache is filled from it; its accuracy is moot)."""
    from fastkd.models import create_model

    torch.manual_seed(0)
    torch.save(create_model(name, classes, low_res, res=res).state_dict(), path)
    return path


def table(rows) -> str:
    return format_table(HEADERS, [[r["set"], r["res"], r["cells"], r["sequential_s"], r["one_pass_s"], r["ratio"],
                                   r["wall_ratio"], r["loader_s"], r["per_cell_s"], r["student_alone_s"],
                                   r["per_cell_vs_alone"]] for r in rows], markdown=True)


def save(path: Optional[str], rows, settings: dict, device: str) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, {"machine": machine_info(device), "settings": settings, "rows": rows, "table": table(rows)})
