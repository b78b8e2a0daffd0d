"""Helpers shared by the training tests: run the fastkd command in this process; fit a run and return its weights;
one step of every method on a pair."""
from __future__ import annotations

import contextlib
import io
import os

import torch

from fastkd.methods import list_methods, parse_methods
from fastkd.train import checkpoint
from fastkd.train.signals import expanded_batch, method_terms, prepare_methods
from fastkd.train.trainer import Trainer

DISTILLERS = [m for m in list_methods() if m != "ce"]


def fastkd_cli(*args):
    """(exit code, stderr) of ``fastkd ARGS`` run in this process."""
    from fastkd.cli import main

    err, code = io.StringIO(), 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def fit(cfg):
    """Train ``cfg`` to its end; (the teacher source's mode, the final student weights)."""
    trainer = Trainer(cfg)
    mode = trainer.teacher_source.mode
    try:
        trainer.fit()
    finally:
        trainer.close()
    return mode, checkpoint.load(os.path.join(cfg.out, "checkpoint.pt"))["model"]


#: an epoch after every method's stages and warm-ups (the main stage of each)
LATE = 10**6


def student_epoch(method) -> int:
    """An epoch in which ``method``'s terms train the student: its exclusive first stage when that trains the student
    (FitNets' and FSP's hints, AB's initialisation: their later stages may emit nothing), else :data:`LATE`."""
    method.set_epoch(0)
    return 0 if method.exclusive and method.trains_student else LATE


#: methods whose first stage trains teacher-side modules alone, on the teacher's signals only (FT's and KTA's
#: paraphrasers on the teacher's map, SSKD's teacher head on its embedding): for one teacher and input, that stage is
#: the same computation whatever the student
TEACHER_SIDE_FIRST_STAGE = frozenset({"ft", "kta", "sskd"})


def step_every_method(teacher, student, x, pair: str, first_stages_run=None) -> None:
    """Every distillation method on ``teacher -> student`` (the trainer's preparation: pair-dependent taps, tap
    check, hooks, adapters; its split of an expanded batch): the methods' summed loss must be finite and reach the
    student and every adapter, and the frozen teacher must get no gradient. The methods run at once in their main
    stage, then the staged ones in their first stage; each method that expands the batch runs in its own step.

    ``first_stages_run``: a set kept by the caller over the students of one teacher and one input ``x``. A method
    of :data:`TEACHER_SIDE_FIRST_STAGE` then runs its first stage only in the first pair that gives it teacher
    signals of its shapes (its key is added to the set); in the later pairs the gradient check covers the
    parameters it trains in its main stage (its first stage's modules, frozen there, were checked in that pair)."""
    labels = index = torch.arange(len(x))
    student.zero_grad(set_to_none=True)  # adapters are new for every pair; the student's grads start clean
    methods = [m for name in DISTILLERS for m in parse_methods(name)]
    s_sig, t_sig = prepare_methods(methods, student, teacher, x.shape[-1], dataset_size=16)
    skipped = set()
    if first_stages_run is not None:
        with torch.no_grad():
            shapes = {k: tuple(v.shape) for k, v in t_sig(x[:1]).items()}
        for m in methods:
            if m.name in TEACHER_SIDE_FIRST_STAGE:
                key = (m.name, tuple(sorted((tap, shapes[tap]) for tap in m.needs)))
                if key in first_stages_run:
                    skipped.add(m.name)
                else:
                    first_stages_run.add(key)
    groups = [[m for m in methods if not m.expands]] + [[m] for m in methods if m.expands]
    trained = set()  # the parameters some stage that ran trains
    try:
        student.train()
        for epoch in (LATE, 0):
            for group in groups:
                active = [m for m in group if epoch == LATE or (m.has_stages() and m.name not in skipped)]
                if not active:
                    continue
                for m in active:
                    m.set_epoch(epoch)
                    if epoch == 0 and m.name in TEACHER_SIDE_FIRST_STAGE:
                        assert m.exclusive and not m.trains_student, f"{m.name}: its first stage trains the student"
                    trained.update(id(p) for p in m.parameters() if p.requires_grad)
                inputs, expander = expanded_batch(active, x)
                s = s_sig(inputs)
                with torch.no_grad():
                    t = t_sig(inputs)
                terms = method_terms(active, s, t, len(x), expander, labels, index)
                loss = sum(terms.values())
                assert torch.isfinite(loss), (pair, epoch, {k: float(v) for k, v in terms.items()})
                loss.backward()
    finally:
        s_sig.close()
        t_sig.close()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), pair
    for m in methods:
        for name, p in m.named_parameters():
            if m.name in skipped and id(p) not in trained:
                continue  # trained only in the first stage, which ran in an earlier pair
            assert p.grad is not None, f"{pair}: {m.name}.{name} got no gradient in any stage"
    assert all(p.grad is None for p in teacher.parameters()), pair
