"""Helpers shared by the training tests: fit a run and return its weights; one step of every method on a pair."""
from __future__ import annotations

import os

import torch

from fastkd.methods import list_methods, parse_methods
from fastkd.train import checkpoint
from fastkd.train.signals import prepare_methods
from fastkd.train.trainer import Trainer

DISTILLERS = [m for m in list_methods() if m != "ce"]


def fit(cfg):
    """Train ``cfg`` to its end; (the teacher source's mode, the final student weights)."""
    trainer = Trainer(cfg)
    mode = trainer.teacher_source.mode
    try:
        trainer.fit()
    finally:
        trainer.close()
    return mode, checkpoint.load(os.path.join(cfg.out, "checkpoint.pt"))["model"]


def step_every_method(teacher, student, x, pair: str) -> None:
    """Every distillation method at once on ``teacher -> student`` (the trainer's preparation: pair-dependent
    taps, tap check, hooks, adapters): one summed loss must be finite and reach the student and every
    adapter, and the frozen teacher must get no gradient."""
    labels = index = torch.arange(len(x))
    student.zero_grad(set_to_none=True)  # adapters are new for every pair; the student's grads start clean
    methods = [m for name in DISTILLERS for m in parse_methods(name)]
    s_sig, t_sig = prepare_methods(methods, student, teacher, x.shape[-1], dataset_size=16)
    try:
        student.train()
        for m in methods:
            m.set_epoch(0)
        s = s_sig(x)
        with torch.no_grad():
            t = t_sig(x)
        terms = {f"{m.name}:{k}": v for m in methods for k, v in m(s, t, labels, index).items()}
        loss = sum(terms.values())
        assert torch.isfinite(loss), (pair, {k: float(v) for k, v in terms.items()})
        loss.backward()
    finally:
        s_sig.close()
        t_sig.close()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), pair
    for m in methods:
        for name, p in m.named_parameters():
            assert p.grad is not None, f"{pair}: {m.name}.{name} got no gradient"
    assert all(p.grad is None for p in teacher.parameters()), pair
