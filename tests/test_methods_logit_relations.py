"""Logit methods dist, ls and ctkd: loss and gradient w.r.t. the student logits against float64 transcriptions
of the reference code (written out below, weights and temperature factors included), CTKD's curriculum and
reversed temperature gradient, half-precision inputs, and option validation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastkd.errors import UserError
from fastkd.methods import METHODS, parse_methods
from fastkd.methods.ctkd import CTKD, ctkd_loss, curriculum_lambda
from fastkd.methods.dist import DIST, dist_loss
from fastkd.methods.ls import LogitStandardization, ls_kd_loss

REL = 1e-9


def _logits(seed, n=8, c=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * scale


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _value_and_grad(fn, z_s):
    """``fn(z)`` and its gradient w.r.t. a fresh float64 leaf copy of ``z_s``."""
    z = z_s.clone().requires_grad_(True)
    out = fn(z)
    (grad,) = torch.autograd.grad(out, z)
    return out.detach(), grad


# ---- the reference code's formulas, float64, transcribed ---------------------------------------------------
def ref_dist(z_s, z_t, tau, beta=1.0, gamma=1.0, kd_loss_weight=2.0, eps=1e-8):
    """image_classification_sota lib/models/losses/dist_kd.py (DIST.forward, pearson_correlation on centred
    rows, eps added to the product of the norms; intra on the transpose), times kd_loss.py's kd_loss_weight.
    Returns (weighted inter, weighted intra)."""
    y_s = torch.exp(z_s / tau - torch.logsumexp(z_s / tau, dim=1, keepdim=True))
    y_t = torch.exp(z_t / tau - torch.logsumexp(z_t / tau, dim=1, keepdim=True))

    def corr(a, b):  # one pair of 1-d vectors
        a, b = a - a.sum() / len(a), b - b.sum() / len(b)
        return torch.dot(a, b) / (torch.sqrt(torch.dot(a, a)) * torch.sqrt(torch.dot(b, b)) + eps)

    n, c = y_s.shape
    inter = 1 - sum(corr(y_s[i], y_t[i]) for i in range(n)) / n
    intra = 1 - sum(corr(y_s[:, j], y_t[:, j]) for j in range(c)) / c
    return kd_loss_weight * beta * tau**2 * inter, kd_loss_weight * gamma * tau**2 * intra


def ref_ls(z_s, z_t, temperature=2.0, kd_weight=9.0):
    """logit-standardization-KD mdistiller/distillers/KD.py: normalize (unbiased std, 1e-7 added), then
    kd_loss: kl_div(reduction='none').sum(1).mean() * T**2, times KD_WEIGHT."""
    def normalize(z):
        c = z.shape[1]
        mean = z.sum(dim=1, keepdim=True) / c
        std = torch.sqrt(((z - mean) ** 2).sum(dim=1, keepdim=True) / (c - 1))
        return (z - mean) / (1e-7 + std)

    log_pred_student = F.log_softmax(normalize(z_s) / temperature, dim=1)
    pred_teacher = F.softmax(normalize(z_t) / temperature, dim=1)
    kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2
    return kd_weight * kd


def ref_ctkd(z_s, z_t, theta, alpha=0.9, t_start=1.0, t_end=20.0):
    """CTKD helper/loops.py (temp = t_start + t_end * sigmoid(Global_T)) and distiller_zoo/KD.py's DistillKL
    (KLDivLoss(batchmean) * T * T), times -a (alpha)."""
    temp = t_start + t_end * torch.sigmoid(theta)
    kl = F.kl_div(F.log_softmax(z_s / temp, dim=1), F.softmax(z_t / temp, dim=1), reduction="batchmean")
    return alpha * kl * temp * temp


def ref_cosine_decay(i, max_value=0.0, min_value=-1.0, num_loops=10):
    """CTKD train_student.py CosineDecay.get_value at the 1-based epoch i."""
    if i < 0:
        i = 0
    if i >= num_loops:
        i = num_loops
    value = (math.cos(i * math.pi / num_loops) + 1.0) * 0.5
    return value * (max_value - min_value) + min_value


# ---- DIST --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_dist_loss_and_gradient_match_the_reference(seed, tau):
    z_s, z_t = _logits(seed), _logits(seed + 10)
    labels = torch.zeros(8, dtype=torch.long)
    method = DIST(temperature=tau)
    got, grad = _value_and_grad(lambda z: sum(method({"logits": z}, {"logits": z_t}, labels).values()), z_s)
    want, want_grad = _value_and_grad(lambda z: sum(ref_dist(z, z_t, tau)), z_s)
    assert got.dtype == torch.float64
    assert abs(got.item() - want.item()) <= REL * abs(want.item())
    assert _rel(grad, want_grad) <= REL
    terms = method({"logits": z_s}, {"logits": z_t}, labels)
    inter, intra = ref_dist(z_s, z_t, tau)
    assert set(terms) == {"dist.inter", "dist.intra"}
    assert abs(terms["dist.inter"].item() - inter.item()) <= REL * inter.item()
    assert abs(terms["dist.intra"].item() - intra.item()) <= REL * intra.item()
    # beta and gamma weight their own relation
    other = DIST(beta=3.0, gamma=0.5, temperature=tau, weight=1.0)({"logits": z_s}, {"logits": z_t}, labels)
    assert other["dist.inter"].item() == pytest.approx(1.5 * inter.item(), rel=REL)
    assert other["dist.intra"].item() == pytest.approx(0.25 * intra.item(), rel=REL)


def test_dist_relations_are_those_of_the_probabilities():
    z_s, z_t = _logits(2), _logits(3)
    inter, intra = dist_loss(z_s, z_t, 4.0)
    # a per-sample shift of the logits leaves the softmax, hence both relations, unchanged
    shifted = dist_loss(z_s + _logits(4)[:, :1], z_t, 4.0)
    assert shifted[0].item() == pytest.approx(inter.item(), rel=1e-12)
    assert shifted[1].item() == pytest.approx(intra.item(), rel=1e-12)
    same = dist_loss(z_t, z_t, 4.0)  # perfectly correlated: zero up to eps (1 - |a|^2 / (|a|^2 + eps))
    assert 0 <= same[0].item() < 1e-4 * inter.item() and 0 <= same[1].item() < 1e-4 * intra.item()
    assert inter.item() > 1e-3 and intra.item() > 1e-3


# ---- logit standardisation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [2.0, 3.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_ls_loss_and_gradient_match_the_reference(seed, temperature):
    z_s, z_t = _logits(seed), _logits(seed + 10, scale=5.0)
    labels = torch.zeros(8, dtype=torch.long)
    method = LogitStandardization(temperature=temperature)
    got, grad = _value_and_grad(lambda z: method({"logits": z}, {"logits": z_t}, labels)["ls"], z_s)
    want, want_grad = _value_and_grad(lambda z: ref_ls(z, z_t, temperature), z_s)
    assert got.dtype == torch.float64
    assert abs(got.item() - want.item()) <= REL * abs(want.item())
    assert _rel(grad, want_grad) <= REL
    # the weight multiplies the T^2-scaled KL (reference: KD_WEIGHT * kd_loss, T^2 inside kd_loss)
    assert ls_kd_loss(z_s, z_t, temperature).item() == pytest.approx(want.item() / 9.0, rel=REL)


def test_ls_is_blind_to_the_scale_and_shift_of_each_logit_vector():
    z_s, z_t = _logits(5), _logits(6)
    base = ls_kd_loss(z_s, z_t, 2.0).item()
    scale, shift = torch.rand(8, 1, dtype=torch.float64) * 4 + 0.5, _logits(7)[:, :1]
    assert ls_kd_loss(z_s * scale + shift, z_t, 2.0).item() == pytest.approx(base, rel=1e-6)
    assert ls_kd_loss(z_s, 10 * z_t - 3, 2.0).item() == pytest.approx(base, rel=1e-6)
    assert ls_kd_loss(z_t * 0.2, z_t, 2.0).item() == pytest.approx(0.0, abs=1e-9)


# ---- CTKD ----------------------------------------------------------------------------------------------------
def test_ctkd_curriculum_follows_the_reference_cosine_decay():
    for epoch in [0, 1, 2, 5, 9, 10, 11, 100]:  # 1-based, as the reference's loop
        assert curriculum_lambda(epoch) == pytest.approx(ref_cosine_decay(epoch), rel=1e-12, abs=1e-15)
        assert curriculum_lambda(epoch, 0.5, -2.0, 5) == pytest.approx(ref_cosine_decay(epoch, 0.5, -2.0, 5),
                                                                       rel=1e-12, abs=1e-15)
    assert curriculum_lambda(1) == pytest.approx(-0.024471741852423, rel=1e-12)  # written out
    assert curriculum_lambda(5) == pytest.approx(-0.5, rel=1e-12) and curriculum_lambda(10) == -1.0
    m = CTKD()
    assert m.grl_lambda() == -1.0  # before any set_epoch: the end of the curriculum
    for epoch in [0, 4, 9, 239]:  # the trainer's 0-based epoch is the reference's epoch + 1
        m.set_epoch(epoch)
        assert m.grl_lambda() == pytest.approx(ref_cosine_decay(epoch + 1), rel=1e-12, abs=1e-15)
    m = CTKD(decay_loops=5)
    m.set_epoch(4)
    assert m.grl_lambda() == -1.0


@pytest.mark.parametrize("theta", [1.0, -0.7])
@pytest.mark.parametrize("epoch", [0, 4, 30])
def test_ctkd_loss_gradients_and_reversed_temperature_gradient_match_the_reference(epoch, theta):
    z_s, z_t = _logits(epoch), _logits(epoch + 10)
    labels = torch.zeros(8, dtype=torch.long)
    method = CTKD().double()
    with torch.no_grad():
        method.global_t.fill_(theta)
    method.set_epoch(epoch)
    lam = ref_cosine_decay(epoch + 1)

    z = z_s.clone().requires_grad_(True)
    got = method({"logits": z}, {"logits": z_t}, labels)["ctkd"]
    assert got.dim() == 0 and got.dtype == torch.float64
    got.backward()
    theta_ref = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    z_ref = z_s.clone().requires_grad_(True)
    want = ref_ctkd(z_ref, z_t, theta_ref)
    want.backward()
    assert abs(got.item() - want.item()) <= REL * abs(want.item())  # the reversal leaves the value alone
    assert _rel(z.grad, z_ref.grad) <= REL  # and the student's gradient
    # the temperature's gradient is the loss's, times lambda < 0: reversed, ascending the KD loss
    assert theta_ref.grad.abs().item() > 1e-6
    assert method.global_t.grad.item() == pytest.approx(lam * theta_ref.grad.item(), rel=REL)
    assert method.global_t.grad.item() * theta_ref.grad.item() < 0
    # and it is the gradient of the same loss at an unreversed temperature, sign flipped and scaled
    plain = CTKD().double()
    with torch.no_grad():
        plain.global_t.fill_(theta)
    ctkd_loss(z_s, z_t, plain.temperature()).mul(0.9).backward()
    assert plain.global_t.grad.item() == pytest.approx(theta_ref.grad.item(), rel=REL)


def test_ctkd_temperature_starts_as_the_reference_and_is_saved_with_the_method():
    m = CTKD()
    assert m.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # 15.62
    assert list(m.state_dict()) == ["global_t"] and m.global_t.shape == (1,)
    other = CTKD()
    with torch.no_grad():
        m.global_t.fill_(-3.0)
    other.load_state_dict(m.state_dict())
    assert other.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(3)), rel=1e-6)
    assert 1.0 < CTKD(t_start=1.0, t_end=20.0).temperature().item() < 21.0
    assert [n for n, _ in m.named_parameters()] == ["global_t"]  # trained with the student's optimiser


# ---- precision and options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dist", "ls", "ctkd"])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(name, half):
    (method,) = parse_methods(name)
    z_s, z_t = _logits(8).to(half), _logits(9).to(half)
    labels = torch.zeros(8, dtype=torch.long)
    terms = method({"logits": z_s.requires_grad_(True)}, {"logits": z_t}, labels)
    exact = method.double()({"logits": z_s.double()}, {"logits": z_t.double()}, labels)
    for key, value in terms.items():
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(exact[key].item(), rel=1e-5)
    sum(terms.values()).backward()
    assert z_s.grad.dtype == half and torch.isfinite(z_s.grad).all()


def test_options_report_reference_defaults_and_bad_options_are_user_errors():
    expected = {
        "dist": ({"beta": 1.0, "gamma": 1.0, "temperature": 4.0, "weight": 2.0, "eps": 1e-8}, 1.0),
        "ls": ({"temperature": 2.0, "weight": 9.0, "eps": 1e-7}, 0.1),
        "ctkd": ({"weight": 0.9, "t_start": 1.0, "t_end": 20.0, "decay_max": 0.0, "decay_min": -1.0,
                  "decay_loops": 10}, 0.1),
    }
    got = {m.name: (m.options(), m.ce_weight) for m in parse_methods("+".join(expected))}
    assert got == expected
    assert all(m.needs == {"logits"} for m in parse_methods("dist+ls+ctkd"))
    assert METHODS.canonical("logit_std") == "ls" and [m.name for m in parse_methods("LOGIT_STD")] == ["ls"]
    assert parse_methods("logit_std", {"ls": {"temperature": 3}})[0].temperature == 3.0
    bad = [
        ("dist", {"gamma": -1.0}), ("dist", {"beta": -0.5}), ("dist", {"temperature": 0}), ("dist", {"eps": 0}),
        ("dist", {"weight": "heavy"}), ("dist", {"tau": 4}),
        ("ls", {"temperature": -2.0}), ("ls", {"weight": -9}), ("ls", {"eps": 0.0}), ("ls", {"temperature": math.inf}),
        ("ctkd", {"t_start": 0}), ("ctkd", {"t_end": -1}), ("ctkd", {"decay_loops": 0}),
        ("ctkd", {"decay_loops": 2.5}), ("ctkd", {"weight": -0.1}), ("ctkd", {"decay_min": math.nan}),
    ]
    for name, opts in bad:
        with pytest.raises(UserError) as err:
            parse_methods(name, {name: opts})
        assert "\n" not in str(err.value) and name in str(err.value), (name, opts, str(err.value))
