"""The training loop: teacher training, student baselines and distillation share it.

The trainer owns both forward passes (student with grad, teacher frozen in eval mode under
``torch.inference_mode``) and hands each method the signals it declared; methods only compute losses.
The step loop never waits for the device: metrics accumulate there (``meters.py``) and are read a few
times per epoch, when a non-finite loss stops the run (within ``LOG_MAX_STEPS`` steps, before any
checkpoint holds it). Checkpoints are written at epoch ends, every ``checkpoint_every`` minutes within
an epoch (with the position in the epoch order, so a resume continues exactly) and on SIGTERM/SIGINT.
Under torchrun a checkpoint also records the world size: one written within an epoch resumes only under
that world size (refused otherwise, in one line), one written at an epoch's end under any.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from fastkd.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_temps
from fastkd.errors import Diverged, UserError
from fastkd.log import log
from fastkd.models import count_parameters
from fastkd.ownership import claims_run_folder

from . import checkpoint, distributed, tricks
from .build import build_run
from .trainer_state import CheckpointState
from .config import TrainConfig
from .evaluate import evaluate
from .interrupt import StopSignals, resume_command
from .meters import EpochMeters
from .schedule import apply_lr, lr_at
from .signals import expanded_batch, method_terms
from .tensorboard_log import ScalarLog, require as require_tensorboard

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
LOGS_PER_EPOCH, LOG_MAX_STEPS = 4, 50  # metric reads (host syncs): a few per epoch, at least every 50 steps


class Trainer(CheckpointState):
    """The training loop over the parts :func:`~fastkd.train.build.build_run` made from ``cfg``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, shared=None):
        """``shared``: another Trainer's :class:`~fastkd.train.build.Run` whose data and loaders this one uses
        (a one-pass row, :mod:`fastkd.train.one_pass`)."""
        self.cfg = cfg
        require_tensorboard(cfg.tensorboard)  # its optional package, before any data is opened
        self.run = run = build_run(cfg, "train", shared=shared)
        self.dist, self.device, self.data, self.eval_split = run.dist, run.device, run.data, run.eval_split
        self.train_loader, self.eval_loader = run.train_loader, run.eval_loader
        self.methods, self.student, self.teacher = run.methods, run.student, run.teacher
        self.s_signals, self.teacher_source, self.optimizer = run.student_signals, run.teacher_source, run.optimizer
        self.ce_weight = cfg.ce_weight if cfg.ce_weight is not None else self.methods[0].ce_weight
        self._adapted = [m for m in self.methods if any(True for _ in m.parameters())]
        global_batch = cfg.batch_size * self.dist.world
        self.sched = replace(cfg, lr=cfg.lr * global_batch / 256) if cfg.lr_scaling else cfg
        self.amp = tricks.amp_dtype(cfg.amp)
        # fp16 needs loss scaling (its gradients underflow); bf16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        if self.scaler is not None and self.device.type == "cpu" and self.dist.main:
            log("warning: --amp fp16 on a CPU runs without fast fp16 kernels (about 20x slower than float32 "
                "for resnet32 on our 2-core machine); --amp bf16 is the CPU's fast mixed precision")
        self.model = torch.compile(self.student) if cfg.compile else self.student
        self.s_signals.model = self.model
        if self.dist.world > 1:
            # every parameter gets a gradient in every step through DDP: a method's exclusive stage (hints that leave
            # the layers above them without gradient, or a stage training adapters alone) runs the student unwrapped
            self.model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.s_signals.model = self.model
        self.start_epoch, self.start_batch, self.history = 0, 0, []
        self.meters = EpochMeters(self.device)
        self.stop = StopSignals()
        self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)
        self.weights_path = os.path.join(cfg.out, WEIGHTS)  # written beside every checkpoint
        exists = distributed.agree_exists(self.ckpt_path, self.dist)  # every rank, or none, sees the checkpoint
        if resume and not exists:
            if self.dist.main:
                log(f"--resume: {cfg.out} holds no checkpoint yet; starting the run from the beginning")
        elif resume:
            self._resume()
        elif exists:
            raise UserError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")
        # rank 0: the metrics.jsonl rows as TensorBoard scalars too (at once those of a resumed run that it lacks)
        self.tensorboard = ScalarLog(cfg.tensorboard, self.history) if cfg.tensorboard and self.dist.main else None

    # ---- training ----------------------------------------------------------------------------
    def _step(self, batch, epoch_pos: float) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """One optimiser step; returns the loss terms and the logits, still on the device (no sync)."""
        apply_lr(self.optimizer, lr_at(self.sched, epoch_pos))  # times each group's lr_scale (--body-lr-scale)
        images = batch.images  # channels-last already when the run is (the Loader's memory_format)
        exclusive = [m for m in self.methods if m.exclusive]  # e.g. FitNets stage 1: hint loss alone
        active = exclusive or self.methods
        x, expander = expanded_batch(active, images)  # SSKD's rotations, MLKD's strong views appended
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            if exclusive and not any(m.trains_student for m in exclusive):  # a stage training adapters only
                s = self._frozen_student(x)
            elif exclusive and self.dist.world > 1:
                # a hint stage's loss reads taps, not the logits DDP returns, and DDP would wait for the gradients
                # of the layers above them: the student runs unwrapped and its gradients are averaged below
                s = self.s_signals(x, model=self.student)
            else:
                s = self.s_signals(x)
            t = self.teacher_source(x, batch) if self.teacher_source is not None else None
        n = images.shape[0]
        logits = s["logits"][:n]
        terms = {} if exclusive else {"ce": self.ce_weight * self._hard_loss(logits, batch)}
        if t is not None:
            # a method with adapters (regressors, embedding heads) runs them in the step's precision: under
            # --amp they take the half-precision signals; the other methods' terms are computed as they were
            terms.update(method_terms(active, s, t, n, expander, batch.labels,
                                      batch.index_on(self.device), autocast=self._method_precision))
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self._average_grads(self.methods + ([self.student] if exclusive else []))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        terms["loss"] = loss
        return {k: v.detach() for k, v in terms.items()}, logits.detach()

    def _method_precision(self, method):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None and method in self._adapted)

    def _frozen_student(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The student's signals without gradient and in eval mode (no BN statistics move): a method's stage
        that trains only its own modules (FT's paraphraser, SSKD's teacher-side head)."""
        self.student.eval()
        try:
            with torch.no_grad():
                return self.s_signals(x)
        finally:
            self.student.train()

    def _average_grads(self, modules) -> None:
        """Adapters (regressors, connectors, heads), and the student in an exclusive stage, run outside DDP: average
        their gradients across ranks so every rank keeps the same weights (every rank has the same parameters
        without gradient: the same graph)."""
        if self.dist.world == 1:
            return
        for m in modules:
            for p in m.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.dist.world

    def _hard_loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """Cross-entropy on the labels, or on the batch's soft targets when images were mixed (mixup,
        cutmix), with label smoothing (Szegedy et al. 2016) folded into either."""
        targets = getattr(batch, "targets", None)
        eps = self.cfg.label_smoothing
        if targets is None:
            return F.cross_entropy(logits.float(), batch.labels, label_smoothing=eps)
        targets = targets * (1 - eps) + eps / targets.shape[1]
        return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()

    def _train_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm

        n_batches, first = len(self.train_loader), self._start_epoch(epoch)
        every = min(LOG_MAX_STEPS, math.ceil(n_batches / LOGS_PER_EPOCH))
        bar = tqdm(total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
                   leave=False, disable=not (self.cfg.progress and self.dist.main), file=sys.stderr, dynamic_ncols=True)
        for done, batch in enumerate(self.train_loader.epoch(epoch, first), first + 1):
            terms, logits = self._step(batch, epoch + (done - 1) / n_batches)
            self.meters.add(terms, logits, batch.labels)
            bar.update(1)
            due = self.cfg.checkpoint_every > 0 and time.time() - self._saved_at >= 60 * self.cfg.checkpoint_every
            local = self.dist.world == 1 and (due or self.stop.signum)  # one process decides alone, every step
            if done % every == 0 or done == n_batches or local:
                seen = self._poll(epoch, done, due)
                bar.set_postfix(loss=f"{seen['train_loss']:.3f}")
        bar.close()
        return self._epoch_row(epoch)

    def _start_epoch(self, epoch: int) -> int:
        """Train mode, the methods' stage for ``epoch``, the epoch's clock; returns its first batch (a resume's)."""
        self.student.train()
        for m in self.methods:
            m.set_epoch(epoch)
        first, self.start_batch = self.start_batch, 0
        self._epoch_started = time.time() - self.meters.seconds
        return first

    def _epoch_row(self, epoch: int) -> dict:
        """The epoch's metrics row (summed over the ranks: the epoch's one all_reduce); resets the meters."""
        row = self.meters.reduce()
        seconds = time.time() - self._epoch_started
        row.update(train_seconds=seconds, train_images_per_s=row["seen"] / max(seconds, 1e-9),
                   lr=lr_at(self.sched, epoch + 1))
        del row["seen"], row["finite"]
        self.meters = EpochMeters(self.device)
        return row

    def _poll(self, epoch: int, done: int, due: bool) -> dict:
        """Read the metrics (the loop's host sync); stop on a non-finite loss; write a checkpoint within the
        epoch when one is due or a signal came, and exit after it on a signal. Under torchrun the ranks
        agree on all three with one small all_reduce, so that they stop and save at the same step."""
        seen = self.meters.read()
        flags = torch.tensor([not seen["finite"], bool(self.stop.signum), due], dtype=torch.float32)
        if self.dist.world > 1:
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad, stop, due = flags.tolist()
        if bad:
            self._diverged(epoch, done)
        if (stop or due) and done < len(self.train_loader):  # an epoch end saves in fit()
            self._save(epoch, done)
        if stop and done < len(self.train_loader):  # at the epoch end, fit() exits after its checkpoint
            self._exit(epoch, done)
        return seen

    def _diverged(self, epoch: int, done: int) -> None:
        kept = f"; the last good checkpoint, {self.ckpt_path}, is kept" if os.path.exists(self.ckpt_path) else ""
        raise Diverged(f"the loss became non-finite (nan or inf) in epoch {epoch + 1} by batch {done}; lower --lr "
                       f"(now {self.cfg.lr}) or check the data{kept}", epoch + 1, done)

    def _save(self, epoch: int, batch: int) -> None:
        """Checkpoint (rank 0), unless the last step left non-finite weights or BN statistics (its loss was
        still finite)."""
        tensors = [t for net in (self.student, *self.methods) for t in net.state_dict().values()
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not torch.nn.utils.get_total_norm(tensors).isfinite():  # one fused pass; nan/inf anywhere -> nan/inf
            self._diverged(epoch, batch)
        meters = None
        if batch < len(self.train_loader):  # mid-epoch: the time this epoch has run, for a resume
            self.meters.seconds = time.time() - self._epoch_started
            meters = self.meters.reduced_state_dict()  # summed over the ranks (a collective: every rank is here)
        if self.dist.main:
            state = self._state(epoch, batch, meters)
            checkpoint.save_atomic(self.ckpt_path, state)
            atomic_write_bytes(self.weights_path, self._weights_file(state))  # the model alone, for any tool
        # no rank moves on (or exits, on a signal) before rank 0's checkpoint is complete: a rank that exits
        # makes torchrun stop the others, which would cut rank 0's write short
        distributed.barrier()
        self._saved_at = time.time()

    def _exit(self, epoch: int, batch: int) -> None:
        if self.dist.main:
            log(f"stopped by {self.stop.name or 'a signal on another rank'} at epoch {epoch + 1}, batch {batch}; "
                 f"checkpoint {self.ckpt_path} written; {resume_command(self.dist.world)}")
        raise SystemExit(self.stop.exit_code if self.stop.signum else 143)

    def fit(self) -> dict:
        started = time.time()
        self._open_out()
        with self.stop:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self._end_epoch(epoch, self._train_epoch(epoch))
                if self.stop.signum and epoch + 1 < self.cfg.epochs:
                    self._exit(epoch, len(self.train_loader))
        return self.finish(time.time() - started)

    def _open_out(self) -> None:
        if self.dist.main:
            os.makedirs(self.cfg.out, exist_ok=True)
            atomic_write_json(os.path.join(self.cfg.out, "config.json"), self.cfg.to_dict())
            remove_stale_temps(self.ckpt_path)  # a write cut short by a kill
            remove_stale_temps(self.weights_path)
        self._saved_at = time.time()

    def eval_due(self, epoch: int) -> bool:
        return epoch + 1 == self.cfg.epochs or (epoch + 1) % self.cfg.eval_every == 0

    def _end_epoch(self, epoch: int, row: dict, evaluated: Optional[dict] = None) -> None:
        """Evaluate when due (``evaluated``: done already, with other models over the same pass), checkpoint, and
        write the epoch's metrics row (and TensorBoard's, and a log line)."""
        cfg, split = self.cfg, self.eval_split
        row = {"epoch": epoch + 1, **row}
        if self.eval_due(epoch):
            evaluated = evaluated or evaluate(self.model, self.eval_loader)
            row.update({f"{split}_{k}": v for k, v in evaluated.items()})
        self.history.append(row)
        self._save(epoch, len(self.train_loader))
        if self.dist.main:
            self._write_metrics()
            if self.tensorboard is not None:
                self.tensorboard.write(self.history)  # after the checkpoint: no epoch twice on a resume
            acc = f" {split} top1 {row[f'{split}_top1']:.2f}" if f"{split}_top1" in row else ""
            log(f"[{cfg.student}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                f"train top1 {row['train_top1']:.2f}{acc} ({row['train_images_per_s']:.0f} img/s)")

    def finish(self, wall: float) -> dict:
        summary = self._summary(wall)
        distributed.barrier()  # summary.json is written when any rank returns
        return summary

    def _write_metrics(self) -> None:
        atomic_write_text(os.path.join(self.cfg.out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.history))

    def _summary(self, wall: float) -> dict:
        final = self.history[-1] if self.history else {}
        key = f"{self.eval_split}_top1"
        train_s = sum(r["train_seconds"] for r in self.history)
        seen = sum(r["train_seconds"] * r["train_images_per_s"] for r in self.history)
        summary = {
            "student": self.student.fastkd_name, "teacher": self.teacher.fastkd_name if self.teacher else None,
            "method": self.cfg.method, "epochs": self.cfg.epochs, "seed": self.cfg.seed,
            "params": count_parameters(self.student),
            "top1": final.get(key), "top5": final.get(f"{self.eval_split}_top5"),
            "best_top1": max((r[key] for r in self.history if key in r), default=None),
            "wall_seconds": wall, "train_seconds": train_s,
            "train_images_per_s": seen / max(train_s, 1e-9),
            "checkpoint": os.path.abspath(self.ckpt_path), "device": str(self.device),
            # where the teacher's signals came from: online, cached (the teacher never ran) or filling
            "teacher_source": self.teacher_source.mode if self.teacher_source is not None else None,
        }
        if self.dist.main:
            atomic_write_json(os.path.join(self.cfg.out, "summary.json"), summary)
        return summary

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.run.close()


@claims_run_folder  # rank 0 locks --out for the run; another run's files need --resume
def train(cfg: TrainConfig, resume: bool = False) -> dict:
    from fastkd.malloc import keep_freed_memory

    keep_freed_memory()  # as the fastkd command: big activations without page faults (fastkd/malloc.py)
    if distributed.elastic_restart() and os.path.exists(os.path.join(cfg.out, CHECKPOINT)):
        resume = True  # torchrun restarted the workers after a failure: continue from the last checkpoint
        if distributed.is_main_process():
            log(f"torchrun restart {distributed.elastic_restart()}: resuming from {os.path.join(cfg.out, CHECKPOINT)}")
    try:
        trainer = Trainer(cfg, resume=resume)
        try:
            return trainer.fit()
        finally:
            trainer.close()
    except RuntimeError as exc:
        if not distributed.lost_peer(exc):
            raise
        log(f"fastkd: error: {distributed.lost_peer_message(exc)}")
        raise SystemExit(1) from None
