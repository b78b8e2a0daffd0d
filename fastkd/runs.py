"""Run folders shared by multi-run commands (compare, ablate, grid): reuse finished cells, write tables."""
from __future__ import annotations

import json
import os
import shutil
import sys

from fastkd.train.config import TrainConfig
from fastkd.train.trainer import CHECKPOINT, train


def run_or_reuse(cfg: TrainConfig, label: str, tag: str) -> dict:
    """The summary of the run in ``cfg.out``: read when it finished before; continued from its last
    checkpoint when it was stopped part-way (``fastkd train --resume`` semantics: a checkpoint written
    with other options is refused); else trained from scratch. So an interrupted multi-run command
    resumes cell by cell and a stopped cell loses at most the epoch it was in."""
    done = os.path.join(cfg.out, "summary.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    if os.path.isfile(os.path.join(cfg.out, CHECKPOINT)):
        print(f"[{tag}] {label} (resumed)", file=sys.stderr, flush=True)
        return train(cfg, resume=True)
    shutil.rmtree(cfg.out, ignore_errors=True)
    print(f"[{tag}] {label}", file=sys.stderr, flush=True)
    return train(cfg)


def write_results(out: str, stem: str, result: dict) -> None:
    """``<stem>.json`` (everything) and ``<stem>.md`` (the Markdown table) in ``out``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(result["table"] + "\n")
