"""One forward pass that returns the signals methods asked for: ``logits`` plus named taps."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from fastkd.models import FeatureTaps


class SignalModel:
    """Wraps a model (possibly DDP-wrapped) with hooks on just the taps some method needs."""

    def __init__(self, model: nn.Module, needs: Iterable[str]):
        self.model = model
        taps = sorted(set(needs) - {"logits"})
        self.taps: Optional[FeatureTaps] = FeatureTaps(model, taps) if taps else None

    def __call__(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = self.model(images)
        signals = dict(self.taps.outputs) if self.taps is not None else {}
        signals["logits"] = logits
        return signals

    def close(self) -> None:
        if self.taps is not None:
            self.taps.close()
