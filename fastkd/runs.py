"""Run folders shared by multi-run commands (compare, ablate): reuse finished cells, write tables."""
from __future__ import annotations

import json
import os
import shutil
import sys

from fastkd.train import distributed
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train


def run_or_reuse(cfg: TrainConfig, label: str, tag: str) -> dict:
    """The summary of the run in ``cfg.out``: read when it finished before, else trained (from scratch:
    an unfinished cell restarts), so an interrupted multi-run command resumes cell by cell."""
    done = os.path.join(cfg.out, "summary.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    distributed.init(cfg.device)  # under torchrun: the process group, for the barrier
    if distributed.is_main_process():  # rank 0 owns the run folders
        shutil.rmtree(cfg.out, ignore_errors=True)
        print(f"[{tag}] {label}", file=sys.stderr, flush=True)
    distributed.barrier()  # no rank opens the cell before rank 0 has cleared it
    return train(cfg)


def write_results(out: str, stem: str, result: dict, table: str) -> None:
    """``<stem>.json`` (everything) and ``<stem>.md`` (the Markdown table) in ``out``, and the table on
    stdout; by rank 0 alone under torchrun."""
    if not distributed.is_main_process():
        return
    print(table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(result["table"] + "\n")
