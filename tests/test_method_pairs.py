"""Every method for every registered teacher/student pair, at low and high resolution.

For each pair the trainer's own preparation (``prepare_methods``: pair-dependent taps, tap check,
hooks, adapters from a dry forward) runs for all methods at once; one training step's summed loss
must be finite, reach the student and every method's adapters, and leave the teacher without grad.
"""
from __future__ import annotations

import pytest
import torch

from fastkd.methods import list_methods, parse_methods
from fastkd.models import create_model, list_models
from fastkd.train.signals import prepare_methods

DISTILLERS = [m for m in list_methods() if m != "ce"]
RES = {True: 32, False: 72}  # 72 > 64: the high-resolution stems and strides
_CACHE = {}


def _model(name: str, low_res: bool, teacher: bool):
    key = (name, low_res, teacher)
    if key not in _CACHE:
        torch.manual_seed(0)
        m = create_model(name, 10, low_res)
        if teacher:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        _CACHE[key] = m
    return _CACHE[key]


@pytest.mark.parametrize("low_res", [True, False], ids=["low", "high"])
@pytest.mark.parametrize("teacher_name", list_models())
def test_all_methods_for_all_students(teacher_name, low_res):
    teacher = _model(teacher_name, low_res, teacher=True)
    x = torch.randn(4, 3, RES[low_res], RES[low_res])
    labels, index = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    for student_name in list_models():
        student = _model(student_name, low_res, teacher=False)
        student.zero_grad(set_to_none=True)  # adapters are new for every pair; the student's grads start clean
        methods = [m for name in DISTILLERS for m in parse_methods(name)]
        s_sig, t_sig = prepare_methods(methods, student, teacher, RES[low_res], dataset_size=16)
        try:
            student.train()
            for m in methods:
                m.set_epoch(0)
            s = s_sig(x)
            with torch.no_grad():
                t = t_sig(x)
            terms = {}
            for m in methods:
                terms.update({f"{m.name}:{k}": v for k, v in m(s, t, labels, index).items()})
            loss = sum(terms.values())
            assert torch.isfinite(loss), (teacher_name, student_name, {k: float(v) for k, v in terms.items()})
            loss.backward()
        finally:
            s_sig.close()
            t_sig.close()
        pair = f"{teacher_name} -> {student_name}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), pair
        for m in methods:
            for name, p in m.named_parameters():
                assert p.grad is not None, f"{pair}: {m.name}.{name} got no gradient"
        assert all(p.grad is None for p in teacher.parameters()), pair
