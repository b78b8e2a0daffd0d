"""The precision methods compute their losses in: float32 for half-precision signals (``--amp``), the inputs' own
precision otherwise (float64 in the tests against the reference formulas)."""
from __future__ import annotations

import contextlib

import torch


def widen(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def full_precision(device: torch.device):
    """A context with autocast off, so adapters and kernels inside run in their inputs' precision, not half."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
