"""The network an export starts from: a fastkd checkpoint's student, rebuilt in inference mode (CPU, float32)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import create_model
from fastkd.train import checkpoint

FIELDS = ("model_name", "num_classes", "low_res", "res", "model")  # what a checkpoint must hold to be exported


@dataclass
class Source:
    path: str
    state: dict  # the checkpoint: model_name, num_classes, low_res, res, mean, std, classes, config, model ...
    model: nn.Module  # eval mode, on the CPU, float32, no gradients
    res: int  # the side of the exported model's square input

    @property
    def name(self) -> str:
        return str(self.state["model_name"])


def load_source(path: str, res: Optional[int] = None) -> Source:
    """The student of checkpoint ``path``, at input side ``res`` (default: the checkpoint's). A model whose input
    size is fixed when built (a vision transformer) is built at the checkpoint's side, the one its weights
    fit; another ``res`` that it cannot run at is a one-line error."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the checkpoint.pt of a `fastkd train` run")
    state = checkpoint.load(path)  # weights only: nothing pickled runs
    missing = [k for k in FIELDS if k not in state]
    if state.get("kind") != checkpoint.KIND or missing:
        raise UserError(f"{path} is not a fastkd checkpoint; give the checkpoint.pt of a `fastkd train` run")
    saved = int(state["res"])
    model = create_model(state["model_name"], int(state["num_classes"]), bool(state["low_res"]), res=saved)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: its weights do not fit the {state['model_name']} this fastkd builds ({first}); "
                        f"export it with the fastkd version that trained it ({state.get('fastkd_version', '?')})")
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    res = saved if res is None else int(res)
    if res != saved:
        _probe(model, state["model_name"], res, saved)
    return Source(path, state, model, res)


def _probe(model: nn.Module, name: str, res: int, saved: int) -> None:
    """One forward pass at ``res``: a model that cannot take that size says so in one line."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, res, res))
    except Exception as exc:  # noqa: BLE001 - any failure at this size is the --res the user chose
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name} cannot run on {res}x{res} inputs ({reason}); its checkpoint was trained at "
                        f"{saved}x{saved}: drop --res or pass --res {saved}")
