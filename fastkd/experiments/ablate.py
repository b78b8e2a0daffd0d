"""``fastkd ablate``: the seed's "training skills" table, tricks added one at a time.

Row 0 is a plain baseline (architecture's own init, constant learning rate, no crop/flip, no
regularisers); every following row adds one trick to everything above it, in the seed's order. Each
row is a normal run folder ``<out>/<k>-<trick>``; a row whose ``summary.json`` exists is reused, so an
interrupted ablation resumes cell by cell.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

from fastkd.log import log
from fastkd.errors import UserError
from fastkd.tables import format_table
from fastkd.experiments.runs import cell_tensorboard, run_or_reuse, write_results
from fastkd.train.config import TrainConfig
from fastkd.train.tensorboard_log import require as require_tensorboard

HEADERS = ["#", "trick", "top-1 %", "change vs previous", "train s", "options added"]


def trick_table(cfg: TrainConfig, pretrained: Optional[str]) -> List[Tuple[str, Dict[str, object]]]:
    """(name, TrainConfig overrides) in the seed's order; each row's overrides add to the rows above."""
    warm = max(1.0, round(0.1 * cfg.epochs))
    low_res = (cfg.res or 224) <= 64
    return [
        ("kaiming init", {"init": "kaiming"}),
        ("pretrained weights", {"pretrained": pretrained}),
        ("no bias decay", {"no_bias_decay": True}),
        ("label smoothing", {"label_smoothing": 0.1}),
        ("random erasing", {"erasing": 0.5}),
        ("linear lr scaling", {"lr_scaling": True, "lr": 0.1}),  # Goyal et al.: 0.1 per 256 images
        ("cutout", {"cutout": 0.5}),
        ("dropout", {"dropout": 0.2}),
        ("cosine lr decay", {"schedule": "cosine"}),
        ("warm-up", {"warmup_epochs": warm}),
        ("mixup", {"mixup": 1.0 if low_res else 0.2}),
        ("zero-gamma", {"zero_gamma": True}),
        ("data augmentation", {"views": True}),
        ("lr schedule: multistep", {"schedule": "multistep",
                                    "milestones": [cfg.epochs // 2, (3 * cfg.epochs) // 4]}),
    ]


TRICKS = [name for name, _ in trick_table(TrainConfig(data="", out="", student=""), None)]


def baseline(cfg: TrainConfig) -> TrainConfig:
    return replace(cfg, init="default", pretrained=None, no_bias_decay=False, label_smoothing=0.0, erasing=0.0,
                   lr_scaling=False, cutout=0.0, dropout=0.0, schedule="constant", warmup_epochs=0.0, mixup=0.0,
                   cutmix=0.0, zero_gamma=False, views=False, method="ce", teacher=None, teacher_weights=None)


def run_ablation(cfg: TrainConfig, out: str, only: Optional[Sequence[str]] = None,
                 pretrained: Optional[str] = None) -> dict:
    rows = [("baseline", {})] + trick_table(cfg, pretrained)
    wanted = set(TRICKS) if only is None else set(only)
    unknown = wanted - set(TRICKS)
    if unknown:
        raise UserError(f"unknown trick(s) {', '.join(sorted(unknown))}; choose from: {', '.join(TRICKS)}")
    require_tensorboard(cfg.tensorboard)  # before the first row
    current, table, cells, prev = baseline(cfg), [], {}, None
    for k, (name, overrides) in enumerate(rows):
        if k and name not in wanted:
            continue
        if name == "pretrained weights" and not pretrained:
            log("[ablate] skipping 'pretrained weights': no --pretrained file given")
            continue
        if name == "zero-gamma" and not _has_residual_blocks(cfg.student):
            log(f"[ablate] skipping 'zero-gamma': {cfg.student} has no additive residual blocks")
            continue
        current = replace(current, **overrides)
        run = os.path.join(out, f"{k:02d}-{name.replace(' ', '_').replace(':', '')}")
        current = replace(current, out=run)
        summary = run_or_reuse(cell_tensorboard(current, out, cfg.tensorboard), name, "ablate")  # <tb>/<k>-<trick>
        cells[name] = summary
        top1 = summary["top1"]
        change = None if prev is None else top1 - prev
        table.append([k, name, top1, change, summary["train_seconds"],
                      ", ".join(f"{a}={b}" for a, b in overrides.items()) or "-"])
        prev = top1
    result = {"model": cfg.student, "data": cfg.data, "epochs": cfg.epochs, "seed": cfg.seed, "cells": cells,
              "table": format_table(HEADERS, table, markdown=True)}
    write_results(out, "ablation", result, format_table(HEADERS, table))
    return result


def _has_residual_blocks(model_name: str) -> bool:
    from fastkd.models import create_model
    from fastkd.train.tricks import residual_last_norms

    return bool(residual_last_norms(create_model(model_name, 10, True)))
