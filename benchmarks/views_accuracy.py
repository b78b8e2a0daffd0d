"""Accuracy with K views per decoded image at an equal number of views seen: the student alone and KD, over seeds.

    python benchmarks/views_accuracy.py --data runs/demo/data --teacher-weights runs/demo/teacher/checkpoint.pt \\
        --out /tmp/views_acc --views 1 2 4 --view-epochs 16 --seeds 0 1 2 [--res 32]
    python benchmarks/views_accuracy.py --photos 1000 --res 112 --teacher ResNet18 --teacher-epochs 8 \\
        --out /tmp/views_acc_photos --json benchmarks/results/views_accuracy_photos.json

``--photos N``: N generated photos whose class is in their pixels (``fastkd.bench.photos``, ``labelled``), 20 %
held out as the val split, written once to ``<out>/photos``; without ``--teacher-weights`` the teacher
(``--teacher``) is trained first for ``--teacher-epochs`` with the same options (``<out>/teacher``).

Per K: ``--view-epochs / K`` epochs of ``--views-per-image K`` (each epoch passes over the photos once with K views
of each, so every K sees the same number of views and takes the same number of steps), for ``ce`` (the student
alone) and ``kd``; every other option as the methods table of benchmarks/README.md (shufflenet_v2_x0_5, batch 32,
lr 0.05, the memory backend, 1 worker). Finished cells (``<out>/k<K>/<method>/seed<s>``) are reused. Prints a
Markdown table (mean and standard deviation of test top-1 over the seeds, training seconds) and writes
``results/views_accuracy.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from fastkd.atomic import atomic_write_json
from fastkd.bench.machine import machine_info
from fastkd.experiments.runs import run_or_reuse
from fastkd.malloc import keep_freed_memory
from fastkd.tables import format_table
from fastkd.train.config import TrainConfig

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "views_accuracy.json")
HEADERS = ["K", "epochs", "method", "top-1 mean %", "top-1 std", "per-seed top-1 %", "train s (mean)"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="A `fastkd convert` folder (the embedded faces: runs/demo/data).")
    ap.add_argument("--photos", type=int, help="Instead of --data: this many generated photos with visible classes.")
    ap.add_argument("--teacher-weights", help="The KD teacher; without it --teacher is trained first.")
    ap.add_argument("--teacher", default="ResNet18")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--out", required=True, help="Work folder for the runs.")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--view-epochs", type=int, default=16, help="Epochs of K = 1; K runs --view-epochs / K.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["ce", "kd"])
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--student", default="shufflenet_v2_x0_5")
    ap.add_argument("--json", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    bad = [k for k in args.views if k < 1 or args.view_epochs % k or 32 % k]
    if bad:
        ap.error(f"--views {bad}: each K must divide --view-epochs {args.view_epochs} and the batch size 32")
    if (args.data is None) == (args.photos is None):
        ap.error("give --data or --photos")
    keep_freed_memory()  # as the fastkd command does
    if args.photos:
        from fastkd.bench.photos import converted_photo_set

        args.data = os.path.join(args.out, "photos")
        if not os.path.isdir(args.data):
            converted_photo_set(args.out, args.photos, progress=False, val_fraction=0.2, labelled=True)
    base = TrainConfig(data=args.data, out="", student=args.student, batch_size=32, lr=0.05, res=args.res,
                       backend="memory", workers=1, device="cpu", progress=False)
    if not args.teacher_weights:
        teacher = TrainConfig(**{**base.to_dict(), "out": os.path.join(args.out, "teacher"), "student": args.teacher,
                                 "epochs": args.teacher_epochs})
        summary = run_or_reuse(teacher, f"teacher {args.teacher}", "views-acc")
        args.teacher_weights = summary["checkpoint"]
        print(f"teacher {args.teacher}: {summary['top1']:.2f} % top-1 after {args.teacher_epochs} epochs")
    rows, cells, start = [], {}, time.time()
    for k in args.views:
        for method in args.methods:
            got = []
            for seed in args.seeds:
                teacher = {} if method == "ce" else {"method": method, "teacher_weights": args.teacher_weights}
                cfg = TrainConfig(**{**base.to_dict(), "out": os.path.join(args.out, f"k{k}", method, f"seed{seed}"),
                                     "epochs": args.view_epochs // k, "views_per_image": k, "seed": seed, **teacher})
                got.append(run_or_reuse(cfg, f"K={k} {method} seed {seed}", "views-acc"))
            accs = [g["top1"] for g in got]
            cells[f"k{k}/{method}"] = accs
            rows.append([k, args.view_epochs // k, method, statistics.mean(accs),
                         statistics.stdev(accs) if len(accs) > 1 else 0.0, " / ".join(f"{a:.2f}" for a in accs),
                         statistics.mean(g["train_seconds"] for g in got)])
    table = format_table(HEADERS, rows, markdown=True)
    print(table)
    result = {"machine": machine_info("cpu"), "settings": vars(args),
              "cells": cells, "table": table, "wall_seconds": round(time.time() - start, 1)}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
