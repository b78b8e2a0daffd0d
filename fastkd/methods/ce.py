"""``ce``: no distillation; the cross-entropy baseline (teacher and student training)."""
from __future__ import annotations

from . import register_method
from .base import Method


@register_method("ce")
class CrossEntropyOnly(Method):
    """Trains on hard labels only; the trainer adds the cross-entropy term (weight 1)."""

    paper = "(no teacher)"
    peers = frozenset({"mdistiller", "torchdistill"})

    needs = frozenset()
    ce_weight = 1.0

    def forward(self, student, teacher, labels, index=None):
        return {}
