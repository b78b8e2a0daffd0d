"""Run folders shared by multi-run commands (compare, ablate): reuse finished cells, write tables."""
from __future__ import annotations

import json
import os
import shutil
import sys

from fastkd.atomic import atomic_write_json, atomic_write_text
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train


def run_or_reuse(cfg: TrainConfig, label: str, tag: str) -> dict:
    """The summary of the run in ``cfg.out``: read when it finished before, else trained (from scratch:
    an unfinished cell restarts), so an interrupted multi-run command resumes cell by cell."""
    done = os.path.join(cfg.out, "summary.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    shutil.rmtree(cfg.out, ignore_errors=True)
    print(f"[{tag}] {label}", file=sys.stderr, flush=True)
    return train(cfg)


def write_results(out: str, stem: str, result: dict) -> None:
    """``<stem>.json`` (everything) and ``<stem>.md`` (the Markdown table) in ``out``."""
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{stem}.json"), result)
    atomic_write_text(os.path.join(out, f"{stem}.md"), result["table"] + "\n")
