"""``--tensorboard DIR``: a run's ``metrics.jsonl`` rows as TensorBoard scalars, in the folder DIR.

Every numeric field of a row becomes one scalar at step = the row's ``epoch`` (1-based, as in metrics.jsonl),
so the runs under one ``tensorboard --logdir`` line up epoch by epoch. A field's tag is its name with the first
``_`` made a ``/``: ``train_loss`` -> ``train/loss``, ``train_kd`` -> ``train/kd``, ``train_top1`` ->
``train/top1``, ``train_images_per_s`` -> ``train/images_per_s``, ``test_top1`` -> ``test/top1`` (the
evaluation split's name, as in metrics.jsonl); ``lr`` stays ``lr``. TensorBoard groups the charts by the part
before the ``/``. Values are float32, TensorBoard's scalar type.

Rank 0 writes (the trainer opens no log on the other ranks), after the epoch's checkpoint and metrics.jsonl, and
flushes at once. No epoch is written twice: on opening, the folder's scalars are read and only rows of later
epochs are written, so a resumed run (or a finished cell that ``compare``, ``ablate`` or ``grid`` reuses) adds
the epochs the folder lacks; a folder holding epochs the run has not reached is another run's, and is refused.
The log reads rows and writes files, nothing else: no random numbers, no model, so a run's numbers are the same
with or without it. The tensorboard package is an optional extra (``pip install 'fastkd[tensorboard]'``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from fastkd.errors import UserError

INSTALL = "pip install 'fastkd[tensorboard]'"


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL} "
                        "(or drop --tensorboard)") from None
    return SummaryWriter


def require(folder: Optional[str]) -> None:
    """Fail in one line, before anything runs, when ``--tensorboard`` is given without its package or names a file."""
    if not folder:
        return
    _summary_writer()
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--tensorboard {folder} is a file; give a folder for the TensorBoard events")


def tag(field: str) -> str:
    """The TensorBoard tag of a metrics.jsonl field: ``train_loss`` -> ``train/loss``, ``lr`` -> ``lr``."""
    return field.replace("_", "/", 1)


def scalars(row: dict) -> Dict[str, float]:
    """A metrics.jsonl row's numeric fields but ``epoch`` (the step), by tag."""
    return {tag(k): float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def last_epoch(folder: str) -> int:
    """The last epoch (step) of which ``folder`` holds scalars; 0 when none."""
    if not os.path.isdir(folder):
        return 0
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(folder, size_guidance={SCALARS: 0})  # 0: every event
    events.Reload()
    return max((e.step for t in events.Tags()["scalars"] for e in events.Scalars(t)), default=0)


class ScalarLog:
    """The TensorBoard scalars of one run in ``folder``; opening it writes the rows of ``history`` that the
    folder lacks (a resumed run's earlier epochs), :meth:`write` the later ones."""

    def __init__(self, folder: str, history: List[dict]):
        require(folder)
        self.folder, self.writer = folder, None
        self.step = last_epoch(folder)
        done = history[-1]["epoch"] if history else 0
        if self.step > done:
            raise UserError(f"--tensorboard {folder} holds TensorBoard scalars up to epoch {self.step}, but this run "
                            f"has done {done}: they are another run's; give each run its own folder")
        self.write(history)

    def write(self, rows: List[dict]) -> None:
        """Write the rows of epochs after the last one written (each row once), then flush."""
        new = [r for r in rows if r["epoch"] > self.step]
        if not new:
            return
        if self.writer is None:  # opened at the first row: a process that writes none leaves no event file
            self.writer = _summary_writer()(self.folder)
        for row in new:
            for name, value in scalars(row).items():
                self.writer.add_scalar(name, value, row["epoch"])
            self.step = row["epoch"]
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def export(folder: str, rows: List[dict]) -> None:
    """Write the rows of a finished run (its metrics.jsonl) that ``folder`` lacks."""
    ScalarLog(folder, rows).close()
