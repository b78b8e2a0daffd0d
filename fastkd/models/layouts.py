"""How a tap's tensor is read from its module, for models whose taps are not plain N x C x H x W outputs.

The seed families' taps are module outputs in N x C x H x W (``embedding``: pooled). Zoo models
(:mod:`.zoo_taps`) also have channels-last stage outputs (Swin), token sequences (vision transformers) and an
``embedding`` that is the classifier's *input*; ``model.fastkd_tap_reads`` says so per tap and
:class:`~fastkd.models.taps.FeatureTaps` turns every one into the N x C x H x W (or N x D) tensor methods expect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Attribute holding ``{tap name: TapRead}`` for taps that are not a plain N x C x H x W module output.
READS_ATTR = "fastkd_tap_reads"
LAYOUTS = ("nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class TapRead:
    """The ``input`` or ``output`` of the tap's module, in ``layout``: ``nchw``, ``nhwc`` or ``tokens``
    (N x L x C whose first ``prefix_tokens`` are class / distillation / register tokens)."""

    read: str = "output"
    layout: str = "nchw"
    prefix_tokens: int = 0


def to_map(x: torch.Tensor, layout: str, prefix_tokens: int = 0) -> torch.Tensor:
    """An N x C x H x W view of ``x`` in ``layout`` (tokens: the patch tokens on their square grid)."""
    if layout == "nchw":
        return x
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    tokens = x[:, prefix_tokens:]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise RuntimeError(f"{tokens.shape[1]} patch tokens do not form a square grid; use square inputs")
    return tokens.unflatten(1, (side, side)).permute(0, 3, 1, 2)
