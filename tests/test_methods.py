"""Distillation losses against values computed independently (float64, by hand), and the registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastkd.errors import UserError
from fastkd.methods import METHODS, list_methods, parse_methods
from run_tools import student_epoch
from fastkd.methods.kd import KD, kd_loss


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kd_loss_matches_hand_computation():
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    T = 4.0
    p, q = _softmax(t / T), _softmax(s / T)
    expected = (p * (np.log(p) - np.log(q))).sum(axis=1).mean() * T * T
    got = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # written-out value for this fixture, so a change of formula (e.g. a missing T^2) is caught
    assert expected == pytest.approx(0.95452015, rel=1e-6)


def test_kd_gradient_is_T_times_q_minus_p_over_N():
    torch.manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64)
    T = 3.0
    kd_loss(s, t, T).backward()
    q, p = torch.softmax(s.detach().float() / T, 1).double(), torch.softmax(t / T, 1)
    assert torch.allclose(s.grad, T * (q - p) / 5, atol=1e-6)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z, z.flip(1), 4.0).item() > 0.01


def test_kd_method_weights_and_defaults():
    m = KD()
    assert (m.temperature, m.weight, m.ce_weight) == (4.0, 0.9, 0.1)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    terms = KD(temperature=2.0, weight=0.5)({"logits": s}, {"logits": t}, torch.zeros(3, dtype=torch.long))
    assert terms["kd"].item() == pytest.approx(0.5 * kd_loss(s, t, 2.0).item(), rel=1e-6)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_gives_finite_terms_from_its_signals(name):
    (method,) = parse_methods(name)
    torch.manual_seed(0)
    stages = {"stage1": (8, 16, 16), "stage2": (16, 8, 8), "stage3": (32, 4, 4), "stage4": (64, 2, 2)}
    shapes = {"logits": (6,), "embedding": (16,), **stages,
              **{f"pre{k[5:]}": v for k, v in stages.items()}}  # pre-activation taps (overhaul)
    assert method.needs <= set(shapes) | {f"pre{k}_stats" for k in range(1, 5)}
    rows = method.expand(torch.zeros(4, 3, 8, 8)).shape[0] if method.expands else 4  # SSKD's, MLKD's copies too
    s = {k: torch.randn(rows, *shape, requires_grad=True) for k, shape in shapes.items()}
    t = {k: torch.randn(rows, *shape) for k, shape in shapes.items()}
    for k in range(1, 5):  # their 2 x C statistics (mean; std)
        s[f"pre{k}_stats"] = t[f"pre{k}_stats"] = torch.rand(2, shapes[f"pre{k}"][0])
    method.dataset_size = 10  # memory-bank methods (crd) are sized by the train split
    method.setup(s, t)
    method.set_epoch(student_epoch(method))  # a staged method's stage that trains the student
    index = torch.tensor([0, 1, 2, 3])
    terms = method(s, t, index, index)
    if not method.needs:  # the plain-CE baseline: no term of its own, the trainer's CE (weight 1) is the loss
        assert terms == {} and method.ce_weight == 1.0
        return
    assert terms, f"{name} returned no loss term"
    for key, value in terms.items():
        assert key == name or key.startswith(f"{name}."), key
        assert value.dim() == 0 and torch.isfinite(value), (key, value)
    total = sum(terms.values())
    total.backward()  # every term reaches some student signal it declared
    assert any(s[k].grad is not None and s[k].grad.abs().sum() > 0 for k in method.needs if s[k].requires_grad)


def test_parse_combined_and_unknown():
    assert [m.name for m in parse_methods("kd+ce")] == ["kd", "ce"]
    assert [m.name for m in parse_methods("KD")] == ["kd"]
    with pytest.raises(UserError, match="unknown method 'nope'"):
        parse_methods("nope")
    assert "kd" in METHODS
