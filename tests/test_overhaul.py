"""``overhaul`` (Heo et al. 2019): margin, partial L2 and loss against independent computations; the
pre-activation taps of every model family; end to end on real model pairs at 32x32."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fastkd.errors import UserError
from fastkd.methods import METHODS, parse_methods
from fastkd.methods.overhaul import Overhaul, margin_from_stats, partial_l2
from fastkd.models import FeatureTaps, create_model, list_models, model_taps
from fastkd.models.preact import PreActTap, attach_preact_taps, preact_taps


# ---- margin -----------------------------------------------------------------------------------------
def test_margin_is_the_truncated_normal_mean():
    mean = np.array([0.0, 1.0, -1.0, 0.5, 2.0, -3.0, 0.2, 1.5])
    std = np.array([1.0, 1.0, 2.0, -0.7, 1.0, 0.5, 0.1, 0.5])  # a BN gamma may be negative: |gamma|
    got = margin_from_stats(torch.tensor(mean), torch.tensor(std)).numpy()
    s = np.abs(std)
    want = stats.truncnorm(a=-np.inf, b=-mean / s, loc=mean, scale=s).mean()  # E[x | x < 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == pytest.approx(-np.sqrt(2 / np.pi), rel=1e-6)  # N(0, 1): -sqrt(2/pi)
    assert (got < 0).all() and got.dtype == np.float32


def test_margin_monte_carlo_and_guard():
    g = np.random.default_rng(0)
    for mu, sigma in [(0.3, 1.2), (-0.5, 0.8)]:
        x = g.normal(mu, sigma, 2_000_000)
        mc = x[x < 0].mean()
        assert margin_from_stats(torch.tensor([mu]), torch.tensor([sigma])).item() == pytest.approx(mc, abs=3e-3)
    # P(x < 0) <= 1e-3 (mu/sigma >= 3.09): the reference's -3 sigma; just above it: the formula
    got = margin_from_stats(torch.tensor([8.0, 3.2, 3.0]), torch.tensor([2.0, 1.0, 1.0]))
    assert got[0].item() == pytest.approx(-6.0) and got[1].item() == pytest.approx(-3.0)
    assert got[2].item() == pytest.approx(stats.truncnorm(-np.inf, -3.0, loc=3.0).mean(), rel=1e-5)
    # degenerate std 0: x == mu, so E[x | x < 0] = mu when mu < 0, and a finite value otherwise
    got = margin_from_stats(torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0]))
    assert got.tolist() == [-2.0, 0.0, 0.0]


# ---- partial L2 ---------------------------------------------------------------------------------------
def test_partial_l2_hand_values():
    t = torch.tensor([-1.0, -1.0, -1.0, 0.0, 0.0, 2.0, 2.0, 0.5])
    s = torch.tensor([-3.0, -1.0, 0.5, -2.0, 1.0, 1.0, 3.0, 0.5])
    # skipped where s <= t <= 0: positions 0 (-3 <= -1), 1 (equal), 3 (-2 <= 0)
    # counted: 2: (0.5+1)^2 = 2.25; 4: 1; 5: 1 (t > 0, s < t); 6: 1; 7: 0
    assert partial_l2(s, t).item() == pytest.approx(2.25 + 1 + 1 + 1)
    assert partial_l2(s.view(2, 4), t.view(2, 4)).item() == pytest.approx(5.25)
    x = torch.randn(3, 4, 5, 5)
    assert partial_l2(x, x).item() == 0.0


# ---- pre-activation taps on every family ----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _model(name):
    torch.manual_seed(0)
    return create_model(name, 10, True)


_ACT = {"relu": torch.relu, "relu6": lambda x: x.clamp(0, 6), "identity": lambda x: x}


@pytest.mark.parametrize("name", list_models())
def test_pre_activation_taps_are_the_input_of_the_stage_relu(name):
    model = _model(name).eval()
    specs = preact_taps(model)
    stages = sorted(t for t in model_taps(model) if t.startswith("stage"))
    assert sorted(specs) == [f"pre{s[5:]}" for s in stages]  # one per stage
    taps = sorted(model_taps(model))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), FeatureTaps(model, taps) as captured:
        model(x)
    out = captured.outputs
    for stage in stages:
        pre, spec = f"pre{stage[5:]}", specs[f"pre{stage[5:]}"]
        post = out[stage]
        if name.startswith("shufflenet") and stage != "stage1":
            post = post[:, 1::2]  # the last unit's own branch: odd channels after the channel shuffle
        assert out[pre].shape == post.shape, (pre, out[pre].shape, post.shape)
        torch.testing.assert_close(_ACT[spec.activation](out[pre]), post, rtol=1e-5, atol=1e-5)
        assert (out[pre] < 0).any(), f"{name} {pre} has no negative value: not pre-activation"
        st = out[pre + "_stats"]
        assert st.shape == (2, out[pre].shape[1])
        if spec.bn is None:  # SqueezeNet: the batch's moments
            torch.testing.assert_close(st[0], out[pre].mean(dim=(0, 2, 3)))
            torch.testing.assert_close(st[1], out[pre].std(dim=(0, 2, 3), unbiased=False))
        else:
            bn = model.get_submodule(spec.bn)
            assert bn.num_features == st.shape[1]
            torch.testing.assert_close(st, torch.stack([bn.bias, bn.weight.abs()]))


def test_resnet_taps_read_the_last_call_of_the_shared_relu():
    model = _model("resnet32")
    assert preact_taps(model)["pre2"] == PreActTap(("layer2.4.relu",), "input", bn="layer2.4.bn2")
    assert preact_taps(_model("ResNet50"))["pre4"].bn == "layer4.2.bn3"
    assert preact_taps(_model("squeezenet1_1"))["pre1"].module == "features.4"


class _Thrice(nn.Module):
    """One in-place ReLU called three times: a tap must see the input of the last call only."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.relu = nn.ReLU(inplace=True)
        self.fastkd_taps = {"out": "relu"}

    def forward(self, x):
        a = self.relu(self.lin(x) - 1)
        b = self.relu(a * 2 - 0.5)
        return self.relu(self.lin(b) + b - 0.3)


def test_last_call_input_of_an_inplace_module_keeps_its_gradient():
    torch.manual_seed(0)
    model = attach_preact_taps(_Thrice(), {"pre1": PreActTap(("relu",), "input")})
    x = torch.randn(4, 3)
    with FeatureTaps(model, ["pre1", "pre1_stats"]) as taps:
        y = model(x)
        pre = taps["pre1"]
        (pre * torch.arange(3.0)).sum().backward()
    grad = model.lin.weight.grad.clone()
    with torch.no_grad():
        b = torch.relu(torch.relu(model.lin(x) - 1) * 2 - 0.5)
        torch.testing.assert_close(pre, model.lin(b) + b - 0.3)
        torch.testing.assert_close(y, torch.relu(pre))
    assert (pre < 0).any()
    model.zero_grad()
    a = torch.relu(model.lin(x) - 1)
    b = torch.relu(a * 2 - 0.5)
    ((model.lin(b) + b - 0.3) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(grad, model.lin.weight.grad)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_pre_taps_listed_but_not_in_the_models_table():
    model = _model("ResNet18")
    assert "pre4" in model_taps(model) and "pre4_stats" in model_taps(model)
    assert not any(t.startswith("pre") for t in model.fastkd_taps)
    with pytest.raises(UserError, match="pre4"):
        FeatureTaps(_model("resnet32"), ["pre4"])


# ---- the method ---------------------------------------------------------------------------------------
def test_defaults_options_and_stage_selection():
    (m,) = parse_methods("overhaul")
    assert METHODS.canonical("OFD") == "overhaul" and m.ce_weight == 1.0
    assert m.options() == {"weight": 1.0, "scale": 1e-3, "stages": ["pre1", "pre2", "pre3"]}
    assert m.needs == {"pre1", "pre2", "pre3", "pre1_stats", "pre2_stats", "pre3_stats"}
    m.select_taps(model_taps(_model("ResNet18")), model_taps(_model("mobilenet_v2")))
    assert m.stages == ("pre1", "pre2", "pre3", "pre4") and "pre4_stats" in m.needs
    m.select_taps(model_taps(_model("ResNet18")), model_taps(_model("resnet32")))
    assert m.stages == ("pre1", "pre2", "pre3")
    explicit = Overhaul(stages="stage3+1")
    explicit.select_taps(model_taps(_model("ResNet18")), model_taps(_model("mobilenet_v2")))
    assert explicit.stages == ("pre1", "pre3")
    for bad in ("pre5", "embedding", ""):
        with pytest.raises(UserError):
            Overhaul(stages=bad)


def _stats(mean, std):
    return torch.stack([torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)])


def test_loss_matches_hand_computation_and_margins_are_fixed_once():
    g = torch.Generator().manual_seed(0)
    n = 3
    s = {"pre1": torch.randn(n, 2, 8, 8, generator=g), "pre2": torch.randn(n, 3, 4, 4, generator=g)}
    t = {"pre1": torch.randn(n, 4, 4, 4, generator=g) * 2,  # teacher smaller than the student at pre1
         "pre2": torch.randn(n, 5, 4, 4, generator=g)}
    t_stats = {"pre1_stats": _stats([0.0, 1.0, -1.0, 0.5], [1.0, 2.0, 1.0, 0.5]),
               "pre2_stats": _stats([0.2] * 5, [1.0] * 5)}
    m = Overhaul(weight=2.0, scale=1e-2, stages="pre1,pre2")
    m.setup(s, t)
    m.train()
    terms = m({**s}, {**t, **t_stats}, None)
    # independently: float64 numpy, margin from scipy, 2x2 block pooling of the student's connector output
    want = 0.0
    for i, k in enumerate(("pre1", "pre2")):
        with torch.no_grad():
            r = m.connectors[i](s[k]).double().numpy()
        if r.shape[-1] != t[k].shape[-1]:
            r = r.reshape(n, -1, 4, 2, 4, 2).mean(axis=(3, 5))
        mu, sd = t_stats[k + "_stats"].double().numpy()
        margin = stats.truncnorm(-np.inf, -mu / sd, loc=mu, scale=sd).mean()
        tt = np.maximum(t[k].double().numpy(), margin[None, :, None, None])
        d = np.where((r <= tt) & (tt <= 0), 0.0, (r - tt) ** 2).sum()
        want += d / 2 ** (1 - i)  # the last stage weighs 1, the one before 1/2
    assert terms["overhaul"].item() == pytest.approx(2.0 * 1e-2 * want / n, rel=1e-4)

    # margins come from the first call's stats and stay; they travel with the state dict
    first = m.margin_pre1.clone()
    m({**s}, {**t, "pre1_stats": _stats([9.0] * 4, [1.0] * 4), "pre2_stats": t_stats["pre2_stats"]}, None)
    assert torch.equal(m.margin_pre1, first) and bool(m.margins_ready)
    resumed = Overhaul(weight=2.0, scale=1e-2, stages="pre1,pre2")
    resumed.setup(s, t)
    resumed.load_state_dict(m.state_dict())
    resumed.train()
    again = resumed({**s}, {**t, "pre1_stats": _stats([9.0] * 4, [1.0] * 4), "pre2_stats": t_stats["pre2_stats"]},
                    None)
    assert torch.equal(resumed.margin_pre1, first)
    assert again["overhaul"].item() == pytest.approx(terms["overhaul"].item(), rel=1e-5)


PAIRS = [("ResNet18", "mobilenet_v2", 4), ("resnet32", "shufflenet_v2_x0_5", 3), ("ResNet50", "squeezenet1_1", 3)]


@pytest.mark.parametrize("t_name,s_name,n_stages", PAIRS)
def test_end_to_end_on_real_pairs(t_name, s_name, n_stages):
    teacher, student = _model(t_name).eval(), _model(s_name)
    (m,) = parse_methods("overhaul")
    m.select_taps(model_taps(student), model_taps(teacher))
    assert len(m.stages) == n_stages
    taps = sorted(m.needs)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with FeatureTaps(student, taps) as s_taps, FeatureTaps(teacher, taps) as t_taps:
        student.eval()  # the trainer's dry forward: shapes for the connectors
        with torch.no_grad():
            student(x), teacher(x)
        m.setup(dict(s_taps.outputs), dict(t_taps.outputs))
        student.train()
        student.zero_grad(set_to_none=True)
        teacher.zero_grad(set_to_none=True)
        logits = student(x)
        teacher(x)  # with grad on purpose: the method must detach the teacher
        terms = m(dict(s_taps.outputs), dict(t_taps.outputs), torch.tensor([3, 7]))
    loss = terms["overhaul"]
    assert set(terms) == {"overhaul"} and torch.isfinite(loss) and loss.item() > 0
    (loss + logits.sum() * 0).backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    for connector in m.connectors:
        assert connector[0].weight.grad is not None and connector[0].weight.grad.abs().sum() > 0
    assert all(torch.isfinite(getattr(m, f"margin_{k}")).all() and (getattr(m, f"margin_{k}") < 0).all()
               for k in m.stages)
