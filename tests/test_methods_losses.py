"""Feature/relation/logit distillation losses (l2, fitnets, pkt, rkd, at, dkd) against values computed
independently in float64 numpy from the papers' formulas, their invariances and gradient flow, and every
method on real model pairs at 32x32."""
from __future__ import annotations

import copy
import functools
import itertools

import numpy as np
import pytest
import torch

from fastkd.errors import UserError
from fastkd.methods import list_methods, parse_methods
from fastkd.methods.at import AT, at_loss
from fastkd.methods.dkd import DKD, dkd_loss
from fastkd.methods.fitnets import FitNets, fitnets_loss
from fastkd.methods.kd import kd_loss
from fastkd.methods.l2 import L2, l2_loss
from fastkd.methods.pkt import PKT, pkt_loss
from fastkd.methods.rkd import RKD, rkd_angle_loss, rkd_distance_loss
from fastkd.models import create_model
from fastkd.train.signals import expanded_batch, method_terms, prepare_methods
from run_tools import LATE, student_epoch

DISTILLERS = [m for m in list_methods() if m != "ce"]  # every registered method but the plain-CE baseline


def _rng(seed=0):
    return np.random.default_rng(seed)


def _t(a, grad=False):
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _block_pool(x, h, w):
    """Average pooling of the trailing H x W to h x w (H, W multiples of h, w): adaptive pooling's value."""
    *lead, big_h, big_w = x.shape
    return x.reshape(*lead, h, big_h // h, w, big_w // w).mean(axis=(-3, -1))


def _huber(a, b):
    d = np.abs(a - b)
    return np.where(d < 1.0, 0.5 * d * d, d - 0.5)


# ---- reference formulas, float64, written out ---------------------------------------------------------
def ref_pkt(s, t, eps=1e-7):
    def probs(x):
        n = len(x)
        k = np.empty((n, n))
        for i, j in itertools.product(range(n), range(n)):
            cos = x[i] @ x[j] / ((np.linalg.norm(x[i]) + eps) * (np.linalg.norm(x[j]) + eps))
            k[i, j] = (cos + 1) / 2
        return k / k.sum(axis=1, keepdims=True)

    p, q = probs(t), probs(s)
    return np.mean(p * np.log((p + eps) / (q + eps)))


def ref_rkd(s, t):
    n = len(s)

    def psi_d(x):
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))

    def psi_a(x):
        out = np.zeros((n, n, n))
        for i, j, k in itertools.product(range(n), range(n), range(n)):
            a, b = x[i] - x[j], x[k] - x[j]
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na > 0 and nb > 0:  # the unit vector of a zero difference is 0
                out[i, j, k] = a @ b / (na * nb)
        return out

    return _huber(psi_d(s), psi_d(t)).mean(), _huber(psi_a(s), psi_a(t)).mean()


def ref_at(s, t, p=2.0):
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])  # features pooled before the power
    s, t = _block_pool(s, h, w), _block_pool(t, h, w)
    qs, qt = (np.abs(s) ** p).mean(axis=1).reshape(len(s), -1), (np.abs(t) ** p).mean(axis=1).reshape(len(t), -1)
    qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    qt = qt / np.linalg.norm(qt, axis=1, keepdims=True)
    return ((qs - qt) ** 2).mean()


def ref_dkd(s, t, y, T):
    tckd = nckd = 0.0
    for zs, zt, g in zip(s / T, t / T, y):
        ps, pt = _softmax(zs[None])[0], _softmax(zt[None])[0]
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        tckd += (bt * np.log(bt / bs)).sum()
        hs, ht = np.delete(ps, g) / (1 - ps[g]), np.delete(pt, g) / (1 - pt[g])
        nckd += (ht * np.log(ht / hs)).sum()
    return tckd / len(y) * T * T, nckd / len(y) * T * T


# ---- values --------------------------------------------------------------------------------------------
def test_l2_matches_hand_computation_and_is_zero_on_identity():
    s, t = _rng().normal(size=(3, 5)), _rng(1).normal(size=(3, 5))
    expected = ((s - t) ** 2).sum() / 15
    assert l2_loss(_t(s), _t(t)).item() == pytest.approx(expected, rel=1e-6)
    assert L2()({"logits": _t(s)}, {"logits": _t(t)}, None)["l2"].item() == pytest.approx(expected, rel=1e-6)
    assert l2_loss(_t(s), _t(s)).item() == 0.0


def test_fitnets_loss_pools_the_larger_map_and_method_weights_it():
    r, h = _rng().normal(size=(2, 3, 4, 4)), _rng(1).normal(size=(2, 3, 2, 2))
    expected = ((_block_pool(r, 2, 2) - h) ** 2).mean()
    assert fitnets_loss(_t(r), _t(h)).item() == pytest.approx(expected, rel=1e-5)
    assert fitnets_loss(_t(h), _t(r)).item() == pytest.approx(expected, rel=1e-5)  # either side larger
    assert fitnets_loss(_t(r), _t(r)).item() == 0.0
    m = FitNets()
    s, t = {"stage2": _t(_rng(2).normal(size=(2, 4, 4, 4)))}, {"stage2": _t(h)}
    m.setup(s, t)
    conv, bn = m.regressor
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (4, 3, (3, 3), (1, 1))
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        regressed = m.regressor(s["stage2"]).double().numpy()
        got = m(s, t, None)["fitnets"].item()
    assert got == pytest.approx(100 * ((_block_pool(regressed, 2, 2) - h) ** 2).mean(), rel=1e-5)


def test_pkt_matches_hand_computation_and_invariances():
    s, t = _rng().normal(size=(5, 3)), _rng(1).normal(size=(5, 7))  # widths may differ
    expected = ref_pkt(s, t)
    assert pkt_loss(_t(s), _t(t)).item() == pytest.approx(expected, rel=1e-4)
    assert expected == pytest.approx(0.0496198, rel=1e-5)  # frozen: a change of the reference is caught
    assert PKT()({"embedding": _t(s)}, {"embedding": _t(t)}, None)["pkt"].item() == pytest.approx(
        30000 * expected, rel=1e-4)
    assert pkt_loss(_t(s), _t(s)).item() == pytest.approx(0.0, abs=1e-7)
    scale = _rng(3).uniform(0.5, 4.0, size=(5, 1))  # cosine kernel: per-sample scale does not matter
    assert pkt_loss(_t(s * scale), _t(t)).item() == pytest.approx(expected, rel=1e-4)


def test_rkd_matches_hand_computation_and_invariances():
    s, t = _rng().normal(size=(5, 3)), _rng(1).normal(size=(5, 6))
    dist, angle = ref_rkd(s, t)
    assert (dist, angle) == pytest.approx((0.0568921, 0.0639031), rel=1e-5)  # frozen reference values
    assert rkd_distance_loss(_t(s), _t(t)).item() == pytest.approx(dist, rel=1e-4)
    assert rkd_angle_loss(_t(s), _t(t)).item() == pytest.approx(angle, rel=1e-4)
    terms = RKD()({"embedding": _t(s)}, {"embedding": _t(t)}, None)
    assert set(terms) == {"rkd.distance", "rkd.angle"}
    assert terms["rkd.distance"].item() == pytest.approx(25 * dist, rel=1e-4)
    assert terms["rkd.angle"].item() == pytest.approx(50 * angle, rel=1e-4)
    # distances are normalised by their mean, angles by construction: scale and shift of the student
    moved = _t(3.0 * s + 1.5)
    assert rkd_distance_loss(moved, _t(t)).item() == pytest.approx(dist, rel=1e-4)
    assert rkd_angle_loss(moved, _t(t)).item() == pytest.approx(angle, rel=1e-4)
    assert rkd_distance_loss(_t(s), _t(s)).item() == pytest.approx(0.0, abs=1e-10)
    assert rkd_angle_loss(_t(s), _t(s)).item() == pytest.approx(0.0, abs=1e-10)


def test_at_matches_hand_computation_across_stages_and_sizes():
    rng = _rng()
    s = {"stage1": rng.normal(size=(2, 4, 8, 8)), "stage2": rng.normal(size=(2, 6, 4, 4)),
         "stage3": rng.normal(size=(2, 8, 4, 4))}
    t = {"stage1": rng.normal(size=(2, 5, 4, 4)), "stage2": rng.normal(size=(2, 3, 8, 8)),
         "stage3": rng.normal(size=(2, 2, 4, 4))}
    per_stage = {k: ref_at(s[k], t[k]) for k in s}
    for k in s:
        assert at_loss(_t(s[k]), _t(t[k])).item() == pytest.approx(per_stage[k], rel=1e-5)
    m = AT()
    ts, tt = {k: _t(v) for k, v in s.items()}, {k: _t(v) for k, v in t.items()}
    m.setup(ts, tt)
    # beta = 1000 on the sum over stages (RepDistiller / mdistiller), not the paper's beta/2
    assert m(ts, tt, None)["at"].item() == pytest.approx(1000 * sum(per_stage.values()), rel=1e-5)
    two = AT(stages="stage1+stage3", p=4)
    assert two.needs == {"stage1", "stage3"}
    expected = 1000 * (ref_at(s["stage1"], t["stage1"], 4) + ref_at(s["stage3"], t["stage3"], 4))
    assert two(ts, tt, None)["at"].item() == pytest.approx(expected, rel=1e-5)
    x = ts["stage2"]
    assert at_loss(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-12)  # normalised attention
    # pooling the attention map after the power (instead of the features before it) is another number
    qs = _block_pool((s["stage1"] ** 2).mean(axis=1), 4, 4).reshape(2, -1)
    qt = (t["stage1"] ** 2).mean(axis=1).reshape(2, -1)
    pooled_after = ((qs / np.linalg.norm(qs, axis=1, keepdims=True)
                     - qt / np.linalg.norm(qt, axis=1, keepdims=True)) ** 2).mean()
    assert abs(per_stage["stage1"] - pooled_after) > 0.1 * per_stage["stage1"]


def test_rkd_angle_of_identical_embeddings_is_zero_with_zero_gradient():
    s, t = _rng(2).normal(size=(6, 4)), _rng(3).normal(size=(6, 5))
    s[1] = s[0]  # two samples with the same student embedding: a zero difference
    _, angle = ref_rkd(s, t)
    x = _t(s, grad=True)
    loss = rkd_angle_loss(x, _t(t))
    assert loss.item() == pytest.approx(angle, rel=1e-4)
    loss.backward()
    # a clamped norm (F.normalize) gives ~1e12 here; with the zero unit vector the gradient is that of
    # the other triples, the size of the loss
    assert torch.isfinite(x.grad).all() and x.grad.abs().max().item() < 1.0
    h = 1e-6  # and it is the float64 finite difference of the loss along a direction keeping s[0] == s[1]
    v = _rng(4).normal(size=s.shape)
    v[1] = v[0]
    up, down = ref_rkd(s + h * v, t)[1], ref_rkd(s - h * v, t)[1]
    assert float((x.grad.numpy().astype(np.float64) * v).sum()) == pytest.approx((up - down) / (2 * h), rel=1e-3)


def test_dkd_matches_hand_computation_and_decomposes_kd():
    s, t = _rng().normal(size=(4, 6)) * 3, _rng(1).normal(size=(4, 6)) * 3
    y = np.array([0, 5, 2, 2])
    tckd, nckd = ref_dkd(s, t, y, 4.0)
    assert (tckd, nckd) == pytest.approx((0.0817956, 4.8904766), rel=1e-5)  # frozen reference values
    got = dkd_loss(_t(s), _t(t), torch.tensor(y), 4.0)
    assert got[0].item() == pytest.approx(tckd, rel=1e-4) and got[1].item() == pytest.approx(nckd, rel=1e-4)
    terms = DKD()({"logits": _t(s)}, {"logits": _t(t)}, torch.tensor(y))
    assert terms["dkd.tckd"].item() == pytest.approx(tckd, rel=1e-4)
    assert terms["dkd.nckd"].item() == pytest.approx(8 * nckd, rel=1e-4)
    # paper eq. 3, per sample: KD = TCKD + (1 - p^t_gt) NCKD
    for n in range(4):
        a, b = dkd_loss(_t(s[n:n + 1]), _t(t[n:n + 1]), torch.tensor(y[n:n + 1]), 4.0)
        p_gt = _softmax(t[n:n + 1] / 4.0)[0, y[n]]
        kd = kd_loss(_t(s[n:n + 1]), _t(t[n:n + 1]), 4.0).item()
        assert kd == pytest.approx(a.item() + (1 - p_gt) * b.item(), rel=1e-4)
    zero = dkd_loss(_t(s), _t(s), torch.tensor(y), 4.0)
    assert zero[0].item() == pytest.approx(0.0, abs=1e-6) and zero[1].item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_warmup_and_fitnets_stages():
    s, t = {"logits": _t(_rng().normal(size=(3, 5)))}, {"logits": _t(_rng(1).normal(size=(3, 5)))}
    y = torch.tensor([1, 2, 3])
    m, full = DKD(), DKD()(s, t, y)["dkd.nckd"].item()  # no set_epoch: no ramp
    for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)]:
        m.set_epoch(epoch)
        assert m(s, t, y)["dkd.nckd"].item() == pytest.approx(factor * full, rel=1e-6)
    m = DKD(warmup=0)
    m.set_epoch(0)
    assert m(s, t, y)["dkd.nckd"].item() == pytest.approx(full, rel=1e-6)

    f = FitNets(stage1_epochs=2)
    sig = {"stage2": torch.randn(2, 4, 4, 4)}
    f.setup(sig, sig)
    with pytest.raises(UserError, match="set_epoch"):
        f(sig, sig, None)
    f.set_epoch(1)
    assert f.exclusive and set(f(sig, sig, None)) == {"fitnets"}
    f.set_epoch(2)
    assert not f.exclusive and f(sig, sig, None) == {}
    assert not FitNets().exclusive


def test_options_report_paper_defaults_and_bad_options_are_user_errors():
    expected = {
        "l2": ({"weight": 1.0}, 0.0, {"logits"}),
        "fitnets": ({"weight": 100.0, "hint": "stage2", "guided": "stage2", "stage1_epochs": 0}, 1.0, {"stage2"}),
        "pkt": ({"weight": 30000.0, "eps": 1e-7}, 1.0, {"embedding"}),
        "rkd": ({"distance_weight": 25.0, "angle_weight": 50.0}, 1.0, {"embedding"}),
        "at": ({"beta": 1000.0, "p": 2.0, "stages": ["stage1", "stage2", "stage3"]}, 1.0,
               {"stage1", "stage2", "stage3"}),
        "dkd": ({"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20}, 1.0, {"logits"}),
    }
    got = {m.name: (m.options(), m.ce_weight, m.needs) for m in parse_methods("+".join(expected))}
    assert got == expected
    assert FitNets(hint="stage3", guided="stage2").needs == {"stage2", "stage3"}
    for bad in (lambda: FitNets(hint="embedding"), lambda: AT(stages="stage5"), lambda: DKD(warmup=-1)):
        with pytest.raises(UserError):
            bad()
    with pytest.raises(UserError, match="N x C x H x W"):
        FitNets().setup({"stage2": torch.zeros(2, 8)}, {"stage2": torch.zeros(2, 8)})


# ---- gradients -----------------------------------------------------------------------------------------
BATCH = 6  # distinct samples: RKD's distances and angles (and PKT's, CRD's) are constant for a batch of 2
LABELS, INDEX = torch.tensor([1, 4, 0, 6, 1, 3]), torch.arange(BATCH)


def _signals(grad, seed, stage_shapes, emb, classes=7, rows=BATCH):
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(rows, *shape, generator=g) for k, shape in stage_shapes.items()}
    out.update({f"pre{k[5:]}": torch.randn(rows, *shape, generator=g) for k, shape in stage_shapes.items()})
    out.update({f"pre{k[5:]}_stats": torch.rand(2, shape[0], generator=g) + 0.1 for k, shape in stage_shapes.items()})
    out["embedding"] = torch.randn(rows, emb, generator=g)
    out["logits"] = torch.randn(rows, classes, generator=g)
    return {k: v.requires_grad_(grad and not k.endswith("_stats")) for k, v in out.items()}


@pytest.mark.parametrize("name", DISTILLERS)
def test_adapters_from_mismatched_shapes_and_gradient_flow(name):
    # teacher 64x8x8 vs student 16x16x16 (and a teacher map larger than the student's at stage2)
    (method,) = parse_methods(name)
    method.set_epoch(student_epoch(method))  # a staged method's stage that trains the student
    # the rows of the batch and of the copies a method makes (SSKD's rotations, MLKD's strong views)
    rows = method.expand(torch.zeros(BATCH, 3, 8, 8)).shape[0] if method.expands else BATCH
    student = _signals(True, 0, {"stage1": (16, 16, 16), "stage2": (32, 4, 4), "stage3": (16, 16, 16)}, 10, rows=rows)
    teacher = _signals(True, 1, {"stage1": (64, 8, 8), "stage2": (64, 8, 8), "stage3": (64, 8, 8)}, 24, rows=rows)
    method.select_taps(set(student) - {"logits"}, set(teacher) - {"logits"})
    method.dataset_size = 2 * BATCH
    method.setup({k: v.detach() for k, v in student.items()}, {k: v.detach() for k, v in teacher.items()})
    terms = method(student, teacher, LABELS, INDEX)
    assert terms and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(v.grad is None for v in teacher.values())
    used = [student[k] for k in sorted(method.needs) if student[k].requires_grad]
    assert used
    for v in used:  # each signal's gradient is of the order of the loss, far from rounding residue
        assert v.grad is not None and torch.isfinite(v.grad).all()
        assert v.grad.norm() * v.detach().norm() > 1e-3 * sum(terms.values()).abs().item()
    for p in method.parameters():  # every trainable adapter of the main stage
        assert not p.requires_grad or (p.grad is not None and torch.isfinite(p.grad).all())
    if name == "fitnets":
        assert method.regressor[0].weight.grad.abs().sum() > 0


# ---- real model pairs ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _model(name):
    torch.manual_seed(0)
    return create_model(name, 10, True)


PAIRS = {  # one pair per student family; the 4-stage pair also exercises stage4 / non-default taps
    "ResNet18->mobilenet_v2": ("ResNet18", "mobilenet_v2",
                               {"at": {"stages": "stage1,stage2,stage3,stage4"},
                                "fitnets": {"hint": "stage3", "guided": "stage3"}}),
    "resnet32->shufflenet_v2_x0_5": ("resnet32", "shufflenet_v2_x0_5", {}),
    "ResNet18->squeezenet1_1": ("ResNet18", "squeezenet1_1", {}),
}


@functools.lru_cache(maxsize=None)
def _model64(name):
    return copy.deepcopy(_model(name)).double()


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("name", DISTILLERS)
def test_method_on_real_models(name, pair):
    """A step of the student against the method's gradient lowers the method's loss by at least half of what
    the gradient predicts, for some step size: the gradient is a real descent direction. Float64 throughout, so
    small steps (where the first order holds, however fast the loss curves) are far above rounding: a
    random teacher's large maps make FSP's and ReviewKD's losses curve fast, and VID's constant log-variance
    term makes a step sized from the loss value too large."""
    t_name, s_name, options = PAIRS[pair]
    teacher, student = _model64(t_name).eval(), _model64(s_name).train()
    (method,) = parse_methods(name, options)
    s_sig, t_sig = prepare_methods([method], student, teacher, 32, dataset_size=2 * BATCH)
    method.double()
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state = copy.deepcopy(method.state_dict())  # memory banks (crd) move in forward
    method.set_epoch(student_epoch(method))  # a staged method's stage that trains the student

    def loss():
        method.load_state_dict(state)
        torch.manual_seed(0)  # the same dropout masks in every evaluation
        inputs, expander = expanded_batch([method], x)  # SSKD's rotations, MLKD's strong views
        s, t = s_sig(inputs), t_sig(inputs)  # the teacher with grad on purpose: methods must detach it
        return sum(method_terms([method], s, t, len(x), expander, LABELS, INDEX).values())

    params = [p for p in student.parameters()]
    try:
        student.zero_grad(set_to_none=True)
        teacher.zero_grad(set_to_none=True)
        before = loss()
        assert torch.isfinite(before) and before.item() > 0
        before.backward()
        assert all(p.grad is None for p in teacher.parameters())
        # every trainable adapter of the stage (a stage-1 module, e.g. FT's paraphraser, is frozen by then)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters() if p.requires_grad)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        assert all(torch.isfinite(g).all() for g in grads)
        sq_norm = sum(g.square().sum() for g in grads).item()
        assert sq_norm > 0
        saved = [p.detach().clone() for p in params]
        ratios = []
        with torch.no_grad():
            for fraction in (1e-3, 1e-4, 1e-5, 1e-6):  # first order: the loss drops by fraction * before
                lr = fraction * before.item() / sq_norm
                for p, g in zip(params, grads):
                    p.sub_(lr * g)
                after = loss().item()
                for p, v in zip(params, saved):
                    p.copy_(v)
                ratios.append((before.item() - after) / (fraction * before.item()))
                if ratios[-1] >= 0.5:
                    break
    finally:
        s_sig.close()
        t_sig.close()
    assert ratios[-1] >= 0.5, (before.item(), ratios)  # drop / predicted drop, largest step first
