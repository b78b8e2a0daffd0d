"""Parameter counting and the rows of the ``fastkd list models`` table."""
from __future__ import annotations

from typing import List, NamedTuple, Tuple

import torch
from torch import nn

from .common import MODELS


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ModelInfo(NamedTuple):
    name: str
    params: int
    taps: Tuple[str, ...]


def describe_models(num_classes: int = 1000) -> List[ModelInfo]:
    """``(name, params, taps)`` for every registered model, high-res stem, ``num_classes`` classes.

    Models are built on the ``meta`` device, so this allocates no weights and is fast.
    """
    from . import create_model  # late import: the package imports this module

    rows = []
    for name in MODELS.names():
        with torch.device("meta"):
            model = create_model(name, num_classes, low_res=False)
        rows.append(ModelInfo(name, count_parameters(model), tuple(model.fastkd_taps)))
    return rows
