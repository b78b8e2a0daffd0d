"""The training loop: teacher training, student baselines and distillation share it.

The trainer owns both forward passes (student with grad, teacher frozen in eval mode without grad)
and hands each method the signals it declared; methods only compute losses.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from fastkd import __version__
from fastkd.errors import UserError
from fastkd.methods import parse_methods
from fastkd.models import count_parameters, create_model
from fastkd.pipelines import Loader, open_converted

from . import checkpoint, distributed, tricks
from .config import TrainConfig
from .evaluate import evaluate, topk_correct
from .schedule import lr_at
from .signals import prepare_methods
from .teacher import TeacherSource, teacher_network

CHECKPOINT = "checkpoint.pt"
# options that do not change the numbers a run produces, so a resume may differ in them
_RESUME_FREE = {"progress", "workers", "device", "eval_every", "backend"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.dist = cfg, distributed.init(cfg.device)
        self.device = distributed.resolve_device(cfg.device, self.dist)
        checkpoint.seed_everything(cfg.seed)
        self.data = open_converted(cfg.data)
        common = dict(backend=cfg.backend, batch_size=cfg.batch_size, res=cfg.res, seed=cfg.seed,
                      workers=cfg.workers, device=self.device, rank=self.dist.rank, world=self.dist.world)
        self.train_loader = Loader(self.data, cfg.train_split, train=True, views=cfg.augment,
                                   augment=self._augment_config(), **common)
        self.eval_split = cfg.eval_split or ("test" if "test" in self.data.splits() else "val")
        self.eval_loader = Loader(self.data, self.eval_split, train=False, **common)
        if len(self.train_loader) == 0:
            raise UserError(f"--batch-size {cfg.batch_size} exceeds the {self.train_loader.count} training samples; "
                            "lower it")
        low_res, n_cls = self.train_loader.low_res, self.data.num_classes
        self.methods = parse_methods(cfg.method, cfg.method_options)
        needs = set().union(*(m.needs for m in self.methods))
        self.student = self._build_student(n_cls, low_res)
        self.teacher = None
        if needs:
            self.teacher = teacher_network(cfg, n_cls, low_res, self.device)
        elif cfg.teacher or cfg.teacher_weights:
            raise UserError(f"--method {cfg.method} uses no teacher; drop --teacher/--teacher-weights or pick "
                            "a distillation method such as --method kd")
        self.s_signals, self.t_signals = prepare_methods(self.methods, self.student, self.teacher,
                                                         self.train_loader.policy.out, self.train_loader.count)
        if self.t_signals is not None:  # online, or read from / written to --teacher-cache
            self.t_signals = TeacherSource(self.t_signals, cfg, self.train_loader, self.dist, self.device)
        self.ce_weight = cfg.ce_weight if cfg.ce_weight is not None else self.methods[0].ce_weight
        extra = [p for m in self.methods for p in m.parameters()]
        self.optimizer = torch.optim.SGD(tricks.param_groups(self.student, extra, cfg.weight_decay, cfg.no_bias_decay),
                                         lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        global_batch = cfg.batch_size * self.dist.world
        self.sched = replace(cfg, lr=cfg.lr * global_batch / 256) if cfg.lr_scaling else cfg
        self.amp = tricks.amp_dtype(cfg.amp)
        # fp16 needs loss scaling (its gradients underflow); bf16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        if self.scaler is not None and self.device.type == "cpu" and self.dist.main:
            _log("warning: --amp fp16 on a CPU runs without fast fp16 kernels (about 20x slower than float32 "
                 "for resnet32 on our 2-core machine); --amp bf16 is the CPU's fast mixed precision")
        self.model = torch.compile(self.student) if cfg.compile else self.student
        self.s_signals.model = self.model
        if self.dist.world > 1:
            # FitNets stage 1 leaves the layers above the guided one without gradients
            unused = any(getattr(m, "stage1_epochs", 0) > 0 for m in self.methods)
            self.model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                                 find_unused_parameters=unused)
            self.s_signals.model = self.model
        self.start_epoch, self.history = 0, []
        self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)
        if resume:
            self._resume()
        elif os.path.exists(self.ckpt_path):
            raise UserError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")

    def _augment_config(self):
        """Batch augmentations from the options, with the papers' shapes (erasing area 0.02-0.4, aspect 0.3-3.3)."""
        from fastkd.pipelines.augment import AugmentConfig

        cfg = self.cfg
        return AugmentConfig(erasing_p=cfg.erasing, cutout=cfg.cutout, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix)

    def _build_student(self, n_cls: int, low_res: bool):
        cfg = self.cfg
        student = create_model(cfg.student, n_cls, low_res)
        tricks.initialise(student, cfg.init)
        if cfg.zero_gamma:
            tricks.zero_gamma(student)
        if cfg.pretrained:
            left = tricks.load_pretrained(student, cfg.pretrained)
            if left and self.dist.main:
                _log(f"--pretrained: {len(left)} tensors kept their initialisation ({', '.join(left[:4])}"
                     f"{', ...' if len(left) > 4 else ''})")
        if cfg.dropout:
            tricks.add_dropout(student, cfg.dropout)
        student = student.to(self.device)
        if cfg.channels_last:
            student = student.to(memory_format=torch.channels_last)
        return student

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {
            "kind": checkpoint.KIND, "fastkd_version": __version__, "epoch": epoch,
            "model_name": self.student.fastkd_name, "num_classes": self.data.num_classes,
            "low_res": self.train_loader.low_res, "res": self.train_loader.res,
            "mean": self.data.mean, "std": self.data.std, "classes": self.data.classes,
            "model": self.student.state_dict(), "methods": [m.state_dict() for m in self.methods],
            "optimizer": self.optimizer.state_dict(), "rng": checkpoint.rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.cfg.to_dict(), "history": self.history,
        }

    def _resume(self) -> None:
        state = checkpoint.load(self.ckpt_path)
        saved = {k: v for k, v in state["config"].items() if k not in _RESUME_FREE}
        now = {k: v for k, v in self.cfg.to_dict().items() if k not in _RESUME_FREE}
        diff = sorted(k for k in now if saved.get(k) != now[k])
        if diff:
            raise UserError(f"--resume with options that differ from the saved run ({', '.join(diff)}); "
                            "rerun with the original options or use another --out")
        self.student.load_state_dict(state["model"])
        for m, sd in zip(self.methods, state["methods"]):
            m.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # the loss scale and its growth counter
        checkpoint.set_rng_state(state["rng"])
        self.start_epoch, self.history = state["epoch"] + 1, list(state["history"])

    # ---- training ----------------------------------------------------------------------------
    def _step(self, batch, epoch_pos: float) -> Dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.sched, epoch_pos)
        images = batch.images.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else batch.images
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            s = self.s_signals(images)
            t = self.t_signals(images, batch) if self.t_signals is not None else None
        exclusive = [m for m in self.methods if m.exclusive]  # e.g. FitNets stage 1: hint loss alone
        terms = {} if exclusive else {"ce": self.ce_weight * self._hard_loss(s["logits"], batch)}
        if t is not None:
            for m in exclusive or self.methods:
                terms.update(m(s, t, batch.labels, batch.index))
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {float(loss)} at epoch {int(epoch_pos)}; lower --lr "
                            f"(now {self.cfg.lr}) or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self._average_method_grads()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        terms["loss"] = loss
        return {k: v.detach() for k, v in terms.items()} | {"logits": s["logits"].detach()}

    def _average_method_grads(self) -> None:
        """Adapters (regressors, connectors, heads) live outside DDP: average their gradients across ranks
        so every rank keeps the same adapters."""
        if self.dist.world == 1:
            return
        import torch.distributed as dist

        for m in self.methods:
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

        self.student.train()
        for m in self.methods:
            m.set_epoch(epoch)
        n_batches, sums, seen, correct = len(self.train_loader), {}, 0, 0
        start = time.time()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=not (self.cfg.progress and self.dist.main), file=sys.stderr, dynamic_ncols=True)
        for i, batch in enumerate(self.train_loader.epoch(epoch)):
            out = self._step(batch, epoch + i / n_batches)
            logits = out.pop("logits")
            n = len(batch.labels)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            seen += n
            correct += topk_correct(logits, batch.labels, (1,))[1]
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}")
        bar.close()
        seconds = time.time() - start
        row = {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}
        row.update(train_top1=100.0 * correct / max(seen, 1), train_seconds=seconds,
                   train_images_per_s=seen * self.dist.world / max(seconds, 1e-9),
                   lr=lr_at(self.sched, epoch + 1))
        return row

    def fit(self) -> dict:
        cfg, started = self.cfg, time.time()
        if self.dist.main:
            os.makedirs(cfg.out, exist_ok=True)
            with open(os.path.join(cfg.out, "config.json"), "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        for epoch in range(self.start_epoch, cfg.epochs):
            row = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            last = epoch + 1 == cfg.epochs
            if last or (epoch + 1) % max(cfg.eval_every, 1) == 0:
                row.update({f"{self.eval_split}_{k}": v for k, v in evaluate(self.model, self.eval_loader).items()})
            self.history.append(row)
            if self.dist.main:
                checkpoint.save_atomic(self.ckpt_path, self._state(epoch))
                self._write_metrics()
                acc = f" {self.eval_split} top1 {row[f'{self.eval_split}_top1']:.2f}" if f"{self.eval_split}_top1" in row else ""
                _log(f"[{cfg.student}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                     f"train top1 {row['train_top1']:.2f}{acc} ({row['train_images_per_s']:.0f} img/s)")
        distributed.barrier()
        return self._summary(time.time() - started)

    def _write_metrics(self) -> None:
        tmp = os.path.join(self.cfg.out, "metrics.jsonl.tmp")
        with open(tmp, "w") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, os.path.join(self.cfg.out, "metrics.jsonl"))

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
        }
        if self.dist.main:
            with open(os.path.join(self.cfg.out, "summary.json.tmp"), "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(os.path.join(self.cfg.out, "summary.json.tmp"), os.path.join(self.cfg.out, "summary.json"))
        return summary

    def close(self) -> None:
        self.s_signals.close()
        if self.t_signals:
            self.t_signals.close()


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
