"""One pass over the data trains a row of cells: ``fastkd grid`` and ``fastkd compare`` with ``--one-pass``.

The cells of a row share everything that makes the batches (data, seed, resolution, views, augmentation,
batch size, epochs; :func:`row_key`), and a view is a pure function of seed, epoch and index, so every cell
would decode the very same batches. Here they are decoded once: per batch, one loader step, one read of the
teacher cache (or one teacher forward) for the union of the cells' signals, then each cell's own student
forward, loss, backward and optimiser step, in the cell's own global-RNG stream. Each cell keeps its
:class:`~fastkd.train.trainer.Trainer`: its run folder, metrics, checkpoints and method state (CRD's memory
bank, FitNets' stages). So a cell of a row ends with the weights it has when trained alone (the same numbers
drawn, the same kernels, the same teacher signals), and a row killed at any moment resumes: each cell
continues from its own checkpoint, the row's pass from the earliest of them, a cell stepping only past its own.

A method that expands the batch (SSKD, MLKD: the teacher runs on the copies it makes) cannot share the
teacher's pass; such a cell trains alone (:func:`can_share`).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import replace
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from fastkd.errors import Diverged
from fastkd.log import log
from fastkd.methods import parse_methods
from fastkd.sizes import format_bytes

from .config import TrainConfig
from .evaluate import evaluate_many
from .interrupt import StopSignals, resume_command
from .signals import SignalModel
from .teacher import TeacherSource
from .trainer import LOG_MAX_STEPS, LOGS_PER_EPOCH, Trainer

MEMORY_SHARE = 0.5  # the cells' weights, gradients, momenta and method state may take this share of free memory


def row_key(cfg: TrainConfig) -> str:
    """Cells with equal keys see the same batches in the same order: their options but the method, its options,
    the run folder and the TensorBoard folder."""
    return json.dumps(replace(cfg, method="ce", method_options={}, out="", tensorboard=None).to_dict(),
                      sort_keys=True, default=str)


def can_share(cfg: TrainConfig) -> bool:
    """No method of the cell expands the batch (the teacher then runs on the batch itself)."""
    return not any(m.expands for m in parse_methods(cfg.method, cfg.method_options))


def _rng() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def _set_rng(state: tuple) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])
    if state[3] is not None:
        torch.cuda.set_rng_state_all(state[3])


class _Cell:
    """A trainer, its global-RNG streams (swapped in for everything it does) and its clock."""

    def __init__(self, trainer: Trainer, label: str):
        self.trainer, self.label, self.rng, self.alive = trainer, label, _rng(), True
        self.first, self.spent = 0, 0.0  # the epoch's first batch for this cell; training seconds it is charged

    def __enter__(self) -> Trainer:
        _set_rng(self.rng)
        return self.trainer

    def __exit__(self, *exc) -> None:
        self.rng = _rng()

    def clock(self) -> None:
        """The trainer's epoch clock set to the seconds charged to this cell (its steps, its share of the rest)."""
        self.trainer._epoch_started = time.time() - self.spent


class SharedTeacher:
    """The teacher's signals of a batch, computed (or read from the cache) once for every cell of the row."""

    def __init__(self, source: TeacherSource):
        self.source, self.batch, self.signals, self.seconds = source, None, None, 0.0

    @property
    def mode(self) -> str:
        return self.source.mode

    def __call__(self, images: torch.Tensor, batch) -> dict:
        if batch is not self.batch:
            started = time.time()
            self.signals, self.batch = self.source(images, batch), batch
            self.seconds += time.time() - started
        return self.signals

    def close(self) -> None:
        self.source.close()


class _CellTeacher:
    """What one cell's trainer calls in place of its own teacher source: its signals out of the shared ones."""

    def __init__(self, shared: SharedTeacher, needs):
        self.shared, self.needs = shared, set(needs)

    @property
    def mode(self) -> str:
        return self.shared.mode

    def __call__(self, images: torch.Tensor, batch) -> dict:
        return {k: v for k, v in self.shared(images, batch).items() if k in self.needs}

    def close(self) -> None:
        pass


def _trainer_bytes(tr: Trainer) -> int:
    """Memory one cell holds between steps: weights, gradients and SGD momentum of the student and the methods'
    adapters, and their buffers (CRD's memory bank)."""
    params = [p for net in (tr.student, *tr.methods) for p in net.parameters()]
    buffers = [b for net in (tr.student, *tr.methods) for b in net.buffers()]
    return 3 * sum(p.numel() * p.element_size() for p in params) + sum(b.numel() * b.element_size() for b in buffers)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class OnePass:
    """A row of cells trained in one pass. Build with :func:`open_row` (which decides whether the row fits)."""

    def __init__(self, cells: List[_Cell], on_diverged: Optional[Callable[[TrainConfig, Diverged], None]] = None):
        self.cells, self.on_diverged = cells, on_diverged
        first = cells[0].trainer
        self.loader, self.dist, self.device, self.cfg = first.train_loader, first.dist, first.device, first.cfg
        self.stop, self._saved_at, self.shared = StopSignals(), time.time(), None
        self._share_teacher()

    def _share_teacher(self) -> None:
        """One teacher source over the union of the cells' signals, read once per batch; each cell's own is closed.
        Every signal keeps where it came from when the cell runs alone (cache or online), or the row does not
        share it (each cell then reads its own)."""
        own = [c.trainer.teacher_source for c in self.cells if c.trainer.teacher_source is not None]
        if len(own) < 2:
            return
        needs = set().union(*(s.signals.needs for s in own))
        union = TeacherSource(SignalModel(own[0].module, needs), own[0].cfg, self.loader, self.dist, self.device)
        if any(not set(s.cached) <= set(union.cached) or not set(s.online) <= set(union.online) for s in own):
            union.close()  # --cache-budget chose otherwise for the union than for a cell alone
            if self.dist.main:
                log("[one-pass] the teacher cache holds other signals for the row than for its cells alone "
                    "(--cache-budget); each cell reads its own")
            return
        self.shared = SharedTeacher(union)
        for c in self.cells:
            source = c.trainer.teacher_source
            if source is not None:
                c.trainer.teacher_source = _CellTeacher(self.shared, source.signals.needs)
                source.close()

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> List[Optional[dict]]:
        """Train every cell to its last epoch; returns each cell's summary (None for a cell that diverged and
        was handed to ``on_diverged``)."""
        started, epochs = time.time(), self.cfg.epochs
        for c in self.cells:
            with c as tr:
                tr._open_out()
        with self.stop:
            for epoch in range(min(c.trainer.start_epoch for c in self.cells), epochs):
                active = [c for c in self.cells if c.alive and c.trainer.start_epoch <= epoch]
                self._epoch(epoch, active)
                ending = [c for c in active if c.alive]
                evaluated = [None] * len(ending)
                if ending and ending[0].trainer.eval_due(epoch):  # every cell over one pass of the eval split
                    first = ending[0].trainer
                    evaluated = evaluate_many([c.trainer.model for c in ending], first.eval_loader)
                for c, done in zip(ending, evaluated):
                    self._guard(c, lambda tr: tr._end_epoch(epoch, tr._epoch_row(epoch), done), clock=True)
                if self.stop.signum and epoch + 1 < epochs:
                    self._exit(epoch, len(self.loader))
        wall = (time.time() - started) / max(1, len(self.cells))  # the row's wall clock, shared out
        return [self._guard(c, lambda tr: tr.finish(wall)) if c.alive else None for c in self.cells]

    def _epoch(self, epoch: int, active: List[_Cell]) -> None:
        from tqdm import tqdm

        n = len(self.loader)
        for c in active:
            with c as tr:
                c.first = tr._start_epoch(epoch)
                c.spent = tr.meters.seconds
        first = min(c.first for c in active)
        every = min(LOG_MAX_STEPS, math.ceil(n / LOGS_PER_EPOCH))
        bar = tqdm(total=n, initial=first, desc=f"row of {len(active)}, epoch {epoch + 1}/{self.cfg.epochs}",
                   unit="batch", leave=False, disable=not (self.cfg.progress and self.dist.main), file=sys.stderr,
                   dynamic_ncols=True)
        waited = time.time()
        for done, batch in enumerate(self.loader.epoch(epoch, first), first + 1):
            stepping = [c for c in active if c.alive and c.first < done]
            common = time.time() - waited  # the loader's share of the step
            teacher_before = self.shared.seconds if self.shared is not None else 0.0
            for c in stepping:
                began = time.time()
                with c as tr:
                    terms, logits = tr._step(batch, epoch + (done - 1) / n)
                    tr.meters.add(terms, logits, batch.labels)
                c.spent += time.time() - began
            if self.shared is not None and stepping:  # the teacher's read, paid by the first cell, shared out
                teacher = self.shared.seconds - teacher_before
                stepping[0].spent -= teacher
                common += teacher
            for c in stepping:
                c.spent += common / len(stepping)
            waited = time.time()
            bar.update(1)
            due = self.cfg.checkpoint_every > 0 and time.time() - self._saved_at >= 60 * self.cfg.checkpoint_every
            local = self.dist.world == 1 and (due or self.stop.signum)
            if done % every == 0 or done == n or local:
                self._poll(epoch, done, due, stepping)
        bar.close()

    def _poll(self, epoch: int, done: int, due: bool, stepping: List[_Cell]) -> None:
        """The row's metric read: each cell's finiteness, one stop flag and one checkpoint flag (one all_reduce
        under torchrun); a checkpoint of every cell that stepped when due or on a signal; exit on a signal."""
        seen = [c.trainer.meters.read() for c in stepping]
        flags = torch.tensor([*(not s["finite"] for s in seen), bool(self.stop.signum), due], dtype=torch.float32)
        if self.dist.world > 1:
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        *bad, stop, due = flags.tolist()
        for c, diverged in zip(stepping, bad):
            if diverged:
                self._guard(c, lambda tr: tr._diverged(epoch, done))
        if (stop or due) and done < len(self.loader):
            for c in stepping:
                if c.alive:
                    self._guard(c, lambda tr: tr._save(epoch, done), clock=True)
            self._saved_at = time.time()
        if stop and done < len(self.loader):
            self._exit(epoch, done)

    def _guard(self, c: _Cell, work: Callable[[Trainer], object], clock: bool = False):
        """``work(trainer)`` in the cell's RNG stream; a cell that diverges leaves the row when ``on_diverged``
        takes it (compare), else it stops the row."""
        try:
            with c as tr:
                if clock:
                    c.clock()
                return work(tr)
        except Diverged as exc:
            if self.on_diverged is None:
                raise
            c.alive = False
            self.on_diverged(c.trainer.cfg, exc)
            return None

    def _exit(self, epoch: int, batch: int) -> None:
        if self.dist.main:
            log(f"stopped by {self.stop.name if self.stop.signum else 'a signal on another rank'} at epoch "
                f"{epoch + 1}, batch {batch}; every cell of the row checkpointed; {resume_command(self.dist.world)}")
        raise SystemExit(self.stop.exit_code if self.stop.signum else 143)

    def close(self) -> None:
        for c in self.cells:
            c.trainer.close()
        if self.shared is not None:
            self.shared.close()


def open_row(cfgs: List[TrainConfig], resumes: List[bool], labels: List[str],
             on_diverged: Optional[Callable[[TrainConfig, Diverged], None]] = None) -> Optional[OnePass]:
    """The row's trainers (the first opens the data and loaders, the others use them), or None with one line
    saying why when the cells' weights and method state would not fit in :data:`MEMORY_SHARE` of free memory."""
    first = Trainer(cfgs[0], resume=resumes[0])
    cells = [_Cell(first, labels[0])]
    try:
        need, free = _trainer_bytes(first) * len(cfgs), free_memory(first.device)
        if need > MEMORY_SHARE * free:
            if first.dist.main:
                log(f"[one-pass] not used: {len(cfgs)} cells would hold about {format_bytes(need)} (weights, gradients, "
                    f"momenta, method state), over half of the {format_bytes(free)} free on {first.device}; the "
                    "cells train one after another")
            first.close()
            return None
        for cfg, resume, label in zip(cfgs[1:], resumes[1:], labels[1:]):
            cells.append(_Cell(Trainer(cfg, resume=resume, shared=first.run), label))
        return OnePass(cells, on_diverged)
    except BaseException:
        for c in cells:
            c.trainer.close()
        raise
