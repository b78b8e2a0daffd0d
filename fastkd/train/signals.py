"""One forward pass that returns the signals methods asked for: ``logits`` plus named taps."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import FeatureTaps, model_taps


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


def check_pair(methods, student: nn.Module, teacher: nn.Module) -> None:
    """Fail before training when a method needs a tap that the student or the teacher lacks."""
    s_taps, t_taps = set(model_taps(student)), set(model_taps(teacher))
    for m in methods:
        for tap in sorted(set(m.needs) - {"logits"}):
            lacking = [f"{role} {net.fastkd_name}" for role, net, taps in
                       (("student", student, s_taps), ("teacher", teacher, t_taps)) if tap not in taps]
            if lacking:
                common = ", ".join(sorted(s_taps & t_taps))
                raise UserError(f"method {m.name} needs feature tap {tap!r}, which the {' and the '.join(lacking)} "
                                f"{'lacks' if len(lacking) == 1 else 'lack'}; taps both {student.fastkd_name} and {teacher.fastkd_name} have: {common} "
                                f"(choose them with --opt {m.name}.<option>=...)")


def prepare_methods(methods, student: nn.Module, teacher: Optional[nn.Module], res: int, dataset_size: int):
    """Everything between building the networks and the first step, shared by the trainer and the tests:
    pair-dependent taps, the tap check, hooks for exactly the signals needed, and the methods' adapters
    shaped by one dry forward pass of both networks (the student in eval mode, so no BN statistics move).
    Returns the student's and the teacher's :class:`SignalModel` (the latter None without a teacher)."""
    if teacher is not None:
        for m in methods:  # taps that depend on the pair (overhaul: the stages both models have)
            m.select_taps(model_taps(student), model_taps(teacher))
        check_pair(methods, student, teacher)
    needs = set().union(*(m.needs for m in methods))
    s_signals = SignalModel(student, needs)
    t_signals = SignalModel(teacher, needs) if teacher is not None else None
    device = next(student.parameters()).device
    x = torch.zeros(2, 3, res, res, device=device)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        s = s_signals(x)
        t = t_signals(x.to(next(teacher.parameters()).device)) if t_signals is not None else {}
    # a teacher on the meta device (its outputs will come from a teacher cache) gives the shapes only
    t = {k: torch.zeros(v.shape, device=device) if v.is_meta else v for k, v in t.items()}
    student.train(was_training)
    for m in methods:
        m.dataset_size = dataset_size  # memory banks (CRD) are sized by the train split
        m.setup(s, t)
        m.to(device)
    return s_signals, t_signals
