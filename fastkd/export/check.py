"""The check every export passes before it is written: one batch of real evaluation views of the run's data
through the exported model and the PyTorch model; the largest absolute difference of their logits."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.pipelines import open_converted
from fastkd.train.build import build_run, config_for_eval

from .source import Source


@dataclass
class Views:
    images: torch.Tensor  # float32 (N, 3, res, res), normalised as the loaders do, contiguous NCHW, on the CPU
    data: str
    split: str


def eval_views(source: Source, data: Optional[str], batch_size: int, backend: str = "torch") -> Views:
    """The first batch of the evaluation views of ``data`` (default: the run's data folder, from the
    checkpoint's config) at the export's input side, built as ``fastkd eval`` builds them."""
    saved = source.state.get("config") or {}
    folder = data or saved.get("data")
    if not data and (not folder or not os.path.isdir(folder)):
        raise UserError(f"the run's data folder {folder} is gone; pass --data FOLDER (the converted dataset "
                        f"{source.path} was trained on) for the check's evaluation views")
    converted = open_converted(folder)
    if converted.num_classes != int(source.state["num_classes"]):
        raise UserError(f"{source.path} predicts {source.state['num_classes']} classes but {folder} has "
                        f"{converted.num_classes}; pass the --data it was trained on")
    cfg = config_for_eval(folder, {"model_name": source.name, "res": source.res}, eval_split=saved.get("eval_split"),
                          backend=backend, batch_size=batch_size, workers=0, device="cpu")
    run = build_run(cfg, "eval")
    try:
        batch = next(iter(run.eval_loader.epoch(0)), None)
    finally:
        run.close()
        run.eval_loader.__dict__.pop("backend", None)  # its decoder and buffers, now
    if batch is None:
        raise UserError(f"split {run.eval_split} of {folder} holds no samples; pass another --data")
    return Views(batch.images.float().contiguous(), folder, run.eval_split)


@torch.no_grad()
def compare(reference: nn.Module, exported: nn.Module, images: torch.Tensor) -> dict:
    """Max absolute logit difference and top-1 agreement of ``exported`` against ``reference`` on ``images``."""
    want = reference(images).float()
    try:
        got = exported(images).float()
    except Exception as exc:  # noqa: BLE001 - an export that does not run is refused, in one line
        text = str(exc).strip()
        reason = text.splitlines()[0][:300] if text else type(exc).__name__
        raise UserError(f"the export fails on {tuple(images.shape)} inputs ({reason}); try another --format")
    if got.shape != want.shape:
        raise UserError(f"the export returns {tuple(got.shape)} logits, not {tuple(want.shape)}; try another --format")
    diff = (got - want).abs().max().item()
    agree = (got.argmax(1) == want.argmax(1)).double().mean().item()
    return {"batch_size": len(images), "max_abs_diff": diff, "top1_agreement": agree,
            "max_abs_logit": want.abs().max().item()}
