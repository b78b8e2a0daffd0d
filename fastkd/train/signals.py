"""One forward pass that returns the signals methods asked for: ``logits`` plus named taps."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import FeatureTaps, model_taps


class SignalModel:
    """Wraps a model (possibly DDP-wrapped) with hooks on just the taps some method needs."""

    def __init__(self, model: nn.Module, needs: Iterable[str]):
        self.model, self.needs = model, set(needs) | {"logits"}
        taps = sorted(set(needs) - {"logits"})
        self.taps: Optional[FeatureTaps] = FeatureTaps(model, taps) if taps else None

    def __call__(self, images: torch.Tensor, model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        """The signals of ``images``; ``model``: the unwrapped network instead of :attr:`model` (its DDP wrapper)."""
        logits = (model or self.model)(images)
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
    try:
        _shape_methods(methods, student, teacher, s_signals, t_signals, res, dataset_size)
    except BaseException:  # a method that cannot set up leaves no hooks on the networks
        for signals in (s_signals, t_signals):
            if signals is not None:
                signals.close()
        raise
    return s_signals, t_signals


def _shape_methods(methods, student, teacher, s_signals, t_signals, res: int, dataset_size: int) -> None:
    """The dry forward pass of :func:`prepare_methods` and each method's setup on its shapes."""
    first = next(student.parameters())
    device = first.device
    x = torch.zeros(2, 3, res, res, device=device, dtype=first.dtype)
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


def check_expanders(methods) -> None:
    """At most one method of a run may run the networks on copies of the batch (:meth:`Method.expand`)."""
    expanders = [m.name for m in methods if m.expands]
    if len(expanders) > 1:
        raise UserError(f"methods {' and '.join(expanders)} each run the networks on their own copies of the batch; "
                        "combine at most one of them per run")


def expanded_batch(methods, images: torch.Tensor):
    """``(inputs, expander)``: the batch as the networks see it (a method's copies appended by its
    :meth:`Method.expand`) and that method, or ``(images, None)``."""
    for m in methods:
        if m.expands:
            return m.expand(images), m
    return images, None


def first_rows(signals: Dict[str, torch.Tensor], n: int) -> Dict[str, torch.Tensor]:
    """The signals of the batch's first ``n`` rows (the original views of an expanded batch); per-model
    statistics (``preK_stats``) as they are."""
    return {k: v if k.endswith("_stats") else v[:n] for k, v in signals.items()}


def method_terms(methods, s: Dict[str, torch.Tensor], t: Dict[str, torch.Tensor], n: int, expander, labels, index,
                 autocast=None) -> Dict[str, torch.Tensor]:
    """Every method's weighted terms: the ``expander`` on the signals of all rows, the others on the first ``n``
    (the batch). ``autocast(method)``: a context to run each method in (the trainer's precision policy)."""
    s_n, t_n = (first_rows(s, n), first_rows(t, n)) if expander is not None else (s, t)
    terms: Dict[str, torch.Tensor] = {}
    for m in methods:
        with autocast(m) if autocast is not None else contextlib.nullcontext():
            terms.update(m(s, t, labels, index) if m is expander else m(s_n, t_n, labels, index))
    return terms
