"""Run folders shared by multi-run commands (compare, ablate, grid): reuse finished cells, write tables."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Dict, List, Optional

from fastkd.log import log
from fastkd.atomic import atomic_write_json, atomic_write_text
from fastkd.errors import Diverged, UserError
from fastkd.ownership import only_run_files, prepare_owned, run_lock
from fastkd.train import distributed
from fastkd.train.config import TrainConfig
from fastkd.train.tensorboard_log import export as export_tensorboard
from fastkd.train.trainer import CHECKPOINT, train

CELL = "cell"  # the marker kind of a cell folder of compare, ablate or grid
DIVERGED = "diverged.json"  # a cell whose loss became non-finite (compare): where, and the message


def run_or_reuse(cfg: TrainConfig, label: str, tag: str, keep_diverged: bool = False) -> dict:
    """The summary of the run in ``cfg.out``: read when it finished before with the same options (other
    options: a UserError); continued from its last checkpoint when it was stopped part-way (``fastkd train
    --resume`` semantics: a checkpoint written with other options is refused); else trained from scratch.
    So an interrupted multi-run command resumes cell by cell, losing at most the epoch it was in.

    ``keep_diverged``: a cell whose loss becomes non-finite does not stop the command: it is recorded in
    ``<cell>/diverged.json`` (epoch, batch, message) and returned as ``{"top1": None, "diverged": {...}}``;
    a later run with the same options reads that record instead of training the cell again."""
    stopped = os.path.join(cfg.out, DIVERGED)
    if keep_diverged and os.path.isfile(stopped):
        _check_same_options(cfg, label)
        with open(stopped) as f:
            return json.load(f)
    try:
        return _run_or_read(cfg, label, tag)
    except Diverged as exc:
        if not keep_diverged:
            raise
        return _record_diverged(cfg, label, tag, exc)


def _record_diverged(cfg: TrainConfig, label: str, tag: str, exc: Diverged) -> dict:
    stopped = os.path.join(cfg.out, DIVERGED)
    record = {"method": cfg.method, "seed": cfg.seed, "top1": None, "train_seconds": None,
              "diverged": {"epoch": exc.epoch, "batch": exc.batch, "message": str(exc)}}
    if distributed.is_main_process():
        atomic_write_json(stopped, record)
    log(f"[{tag}] {label}: diverged ({exc}); recorded in {stopped}, going on")
    return record


def run_cells(cfgs: List[TrainConfig], labels: List[str], tag: str, keep_diverged: bool = False,
              one_pass: bool = True) -> List[dict]:
    """:func:`run_or_reuse` for each cell; with ``one_pass``, the cells left to train that see the same batches
    (:func:`fastkd.train.one_pass.row_key`) train together in one pass over the data, unless their state would not
    fit in memory (one line says so, and they train one after another)."""
    from fastkd.train.one_pass import can_share, row_key

    results: List[Optional[dict]] = [None] * len(cfgs)
    rows: Dict[str, List[int]] = {}
    for i, cfg in enumerate(cfgs):
        finished = os.path.isfile(os.path.join(cfg.out, "summary.json")) or (
            keep_diverged and os.path.isfile(os.path.join(cfg.out, DIVERGED)))
        if one_pass and not finished and can_share(cfg):
            rows.setdefault(row_key(cfg), []).append(i)
    for members in rows.values():
        if len(members) > 1:
            got = _one_pass([cfgs[i] for i in members], [labels[i] for i in members], tag, keep_diverged)
            for i, summary in zip(members, got or ()):
                results[i] = summary
    return [r if r is not None else run_or_reuse(cfg, label, tag, keep_diverged)
            for r, cfg, label in zip(results, cfgs, labels)]


def _one_pass(cfgs: List[TrainConfig], labels: List[str], tag: str, keep_diverged: bool) -> Optional[List[dict]]:
    """Train ``cfgs`` as one row (:mod:`fastkd.train.one_pass`): each cell's folder prepared and locked as
    :func:`_run_or_read` does, a stopped cell resumed from its checkpoint. None when the row does not fit."""
    import contextlib

    from fastkd.malloc import keep_freed_memory
    from fastkd.ownership import claim_run
    from fastkd.train.one_pass import open_row

    keep_freed_memory()
    distributed.init(cfgs[0].device)
    resumes = [os.path.isfile(os.path.join(cfg.out, CHECKPOINT)) for cfg in cfgs]
    diverged, label_of = {}, {cfg.out: label for cfg, label in zip(cfgs, labels)}

    def on_diverged(cfg, exc):
        diverged[cfg.out] = _record_diverged(cfg, label_of[cfg.out], tag, exc)

    with contextlib.ExitStack() as held:
        for cfg, resume, label in zip(cfgs, resumes, labels):
            held.enter_context(run_lock(cfg.out))
            if distributed.is_main_process() and not resume:
                prepare_owned(cfg.out, CELL, legacy=lambda folder, names: only_run_files(names))
            held.enter_context(claim_run(cfg.out, resume))
        distributed.barrier()
        row = open_row(cfgs, resumes, labels, on_diverged if keep_diverged else None)
        if row is None:
            return None
        if distributed.is_main_process():
            log(f"[{tag}] one pass over the data for {len(cfgs)} cells: " + "; ".join(
                f"{label}{' (resumed)' if resume else ''}" for label, resume in zip(labels, resumes)))
        try:
            summaries = row.fit()
        finally:
            row.close()
    return [s if s is not None else diverged[cfg.out] for s, cfg in zip(summaries, cfgs)]


def _run_or_read(cfg: TrainConfig, label: str, tag: str) -> dict:
    done = os.path.join(cfg.out, "summary.json")
    if os.path.isfile(done):
        _check_same_options(cfg, label)
        metrics = os.path.join(cfg.out, "metrics.jsonl")
        if cfg.tensorboard and os.path.isfile(metrics) and distributed.is_main_process():
            with open(metrics) as f:  # a cell finished before --tensorboard was given: the epochs its folder lacks
                export_tensorboard(cfg.tensorboard, [json.loads(line) for line in f if line.strip()])
        with open(done) as f:
            return json.load(f)
    if os.path.isfile(os.path.join(cfg.out, CHECKPOINT)):
        log(f"[{tag}] {label} (resumed)")
        return train(cfg, resume=True)
    distributed.init(cfg.device)  # under torchrun: the process group, for the barrier
    with run_lock(cfg.out):  # rank 0: no other process trains (or clears) this cell meanwhile
        if distributed.is_main_process():  # rank 0 owns the run folders
            # empties only a cell folder this command made (marker), or one holding only run files
            prepare_owned(cfg.out, CELL, legacy=lambda folder, names: only_run_files(names))
            log(f"[{tag}] {label}")
        distributed.barrier()  # no rank opens the cell before rank 0 has cleared it
        return train(cfg)


def cell_tensorboard(cfg: TrainConfig, root: str, folder: Optional[str]) -> TrainConfig:
    """``cfg`` (a cell whose run folder is under ``root``) with its TensorBoard folder
    ``<folder>/<the cell's run folder under root>`` (``--tensorboard folder`` of compare, ablate or grid), so
    that ``tensorboard --logdir folder`` shows the cells side by side under their run folders' names."""
    if not folder:
        return cfg
    return replace(cfg, tensorboard=os.path.join(folder, os.path.relpath(cfg.out, root)))


def _check_same_options(cfg: TrainConfig, label: str) -> None:
    """A finished cell is reused only if it ran with ``cfg``'s options (those a resume may not change)."""
    path = os.path.join(cfg.out, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    diff = cfg.differs_from(saved)
    if diff:
        raise UserError(f"{cfg.out} ({label}) finished with other options ({', '.join(diff)}); delete that folder "
                        "to run it again with these options, or choose another --out")


def write_results(out: str, stem: str, result: dict, table: str) -> None:
    """``<stem>.json`` (everything) and ``<stem>.md`` (the Markdown table) in ``out``, and the table on
    stdout; by rank 0 alone under torchrun."""
    if not distributed.is_main_process():
        return
    print(table)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{stem}.json"), result)
    atomic_write_text(os.path.join(out, f"{stem}.md"), result["table"] + "\n")
