"""Learning-rate schedules as pure functions of the (fractional) epoch, applied every iteration."""
from __future__ import annotations

import bisect
import math

from .config import TrainConfig


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at ``epoch`` (e.g. 3.5 = half-way through the fourth epoch).

    Linear warm-up from 0 over ``warmup_epochs``; then ``cosine`` (Loshchilov & Hutter 2017) to 0 at
    ``epochs``, ``step`` (x gamma every ``step_size`` epochs), ``multistep`` (x gamma at each
    milestone) or ``constant``.
    """
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        t = min(max(epoch - cfg.warmup_epochs, 0.0) / span, 1.0)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** bisect.bisect_right(cfg.milestones, epoch)
    return cfg.lr  # constant (TrainConfig admits no other)


def apply_lr(optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr`` times the group's ``lr_scale`` (1 when it has none:
    fine-tuning's pretrained body has ``--body-lr-scale``, see ``tricks.param_groups``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
