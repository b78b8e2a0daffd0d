"""sp, nst, kdsvd, cc and ickd against float64 transcriptions of their reference code, written out here in
plain torch (mdistiller SP.py / NST.py / KDSVD.py, RepDistiller's KDSVD layout, torchdistill CCKDLoss, the
ICKD authors' ICKDLoss): the loss and its gradient w.r.t. the student's signals (and the adapters) within
1e-9 relative, with the stages, weights and normalisations of the reference; their defaults, pair-dependent
stages, half-precision inputs and option errors."""
from __future__ import annotations

import math

import pytest
import torch

from fastkd.errors import UserError
from fastkd.methods import parse_methods
from fastkd.methods.kdsvd import KDSVD

REL = 1e-9
N = 6
STAGES4 = {"stage1", "stage2", "stage3", "stage4", "embedding"}
STAGES3 = {"stage1", "stage2", "stage3", "embedding"}


def _maps(seed, shapes, grad=False, relu=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        x = torch.randn(N, *shape, generator=g, dtype=torch.float64)
        out[k] = (x.relu() if relu else x).requires_grad_(grad)
    return out


def _pool(x, h, w):
    """Block average of the trailing H x W to h x w (H, W multiples): adaptive pooling's value."""
    n, c, big_h, big_w = x.shape
    return x.reshape(n, c, h, big_h // h, w, big_w // w).mean(dim=(3, 5))


def _rownorm(m, dim):
    return m / m.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def _check(method, student, teacher, reference, extra=()):
    """The method's total loss and its gradients (student signals, then ``extra`` parameters) against
    ``reference(student_copy, teacher)``; the copies carry their own grads."""
    terms = method(student, teacher, None, None)
    (name,) = terms
    got = terms[name]
    assert got.dtype == torch.float64
    used = sorted(method.needs)  # the student signals the method reads
    got_grads = torch.autograd.grad(got, [student[k] for k in used] + list(extra))
    mine = {k: v.detach().clone().requires_grad_(True) for k, v in student.items()}
    params = [p.detach().clone().requires_grad_(True) for p in extra]
    want = reference(mine, {k: v.detach() for k, v in teacher.items()}, params)
    want_grads = torch.autograd.grad(want, [mine[k] for k in used] + params)
    assert want.item() > 0
    assert abs(got.item() - want.item()) <= REL * abs(want.item()), (name, got.item(), want.item())
    for g, w in zip(got_grads, want_grads):
        assert w.norm() > 0
        assert (g - w).norm() <= REL * w.norm(), (name, (g - w).norm().item(), w.norm().item())
    return want.item()


# ---- SP: mdistiller similarity_loss, 1/bsz^2 * ||G_t - G_s||_F^2 on feats[-1], weight 3000 ------------
def ref_sp(f_s, f_t):
    b = f_s.shape[0]
    f_s, f_t = f_s.reshape(b, -1), f_t.reshape(b, -1)
    g_s, g_t = _rownorm(f_s @ f_s.t(), 1), _rownorm(f_t @ f_t.t(), 1)
    return ((g_t - g_s) * (g_t - g_s)).reshape(-1, 1).sum(0)[0] / (b * b)


def test_sp_matches_reference_on_the_last_common_stage():
    s = _maps(0, {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (8, 4, 4), "stage4": (8, 2, 2)}, True)
    t = _maps(1, {"stage1": (5, 4, 4), "stage2": (3, 8, 8), "stage3": (12, 2, 2)}, relu=True)
    (m,) = parse_methods("sp")
    m.select_taps(STAGES4, STAGES3)  # the last stage both have: stage3
    assert m.needs == {"stage3"}
    _check(m, s, t, lambda a, b, _: 3000 * ref_sp(a["stage3"], b["stage3"]))
    (two,) = parse_methods("sp", {"sp": {"stages": "stage1,stage2", "weight": 7.0}})
    _check(two, s, t, lambda a, b, _: 7.0 * (ref_sp(a["stage1"], b["stage1"]) + ref_sp(a["stage2"], b["stage2"])))


# ---- NST: mdistiller single_stage_nst_loss (poly kernel MMD^2), feats[1:], weight 50 --------------------
def ref_nst(f_s, f_t):
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = _pool(f_s, t_h, t_h)
    elif s_h < t_h:
        f_t = _pool(f_t, s_h, s_h)
    f_s = _rownorm(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), 2)
    f_t = _rownorm(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), 2)

    def poly(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    return poly(f_t, f_t).mean() + poly(f_s, f_s).mean() - 2 * poly(f_s, f_t).mean()


def test_nst_matches_reference_over_every_common_stage():
    s = _maps(2, {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (8, 4, 4)}, True, relu=True)
    t = _maps(3, {"stage1": (5, 4, 4), "stage2": (3, 8, 8), "stage3": (12, 4, 4), "stage4": (2, 2, 2)}, relu=True)
    (m,) = parse_methods("nst")
    m.select_taps(STAGES3, STAGES4)
    assert m.needs == {"stage1", "stage2", "stage3"}
    m.setup(s, t)
    _check(m, s, t, lambda a, b, _: 50 * sum(ref_nst(a[k], b[k]) for k in ("stage1", "stage2", "stage3")))


# ---- KDSVD: mdistiller kdsvd_loss / svd / align_rsv; RepDistiller's HW x C matrix for layout=paper ---------
def ref_kdsvd(g_s, g_t, k, layout):
    def svd(feat, n):
        b, c, h, w = feat.shape
        x = feat.reshape(b, c * h, w) if layout == "mdistiller" else feat.reshape(b, c, h * w).transpose(-2, -1)
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh.transpose(-2, -1)
        s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
        v = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
        return _rownorm(s[:, :n], 1), _rownorm(v[:, :, :n], 1)

    def align(a, b):
        cosine = a.transpose(-2, -1) @ b
        top = torch.max(cosine.abs(), 1, keepdim=True)[0]
        mask = torch.where(top == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
        return a @ mask

    losses, v_sb, v_tb = [], None, None
    for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
        s_t, v_t = svd(f_t, k)
        _, v_s = svd(f_s, k + 3)
        v_s = align(v_s, v_t)
        v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
        if i > 0:
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            d = (s_rbf - t_rbf).pow(2)
            losses.append(torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum())
        v_tb, v_sb = v_t, v_s
    return sum(l / g_s[0].shape[0] for l in losses)


def test_kdsvd_matches_mdistiller_with_pooled_sizes_and_any_channels():
    s = _maps(4, {"stage1": (4, 16, 16), "stage2": (6, 8, 8), "stage3": (8, 4, 4)}, True, relu=True)
    t = _maps(5, {"stage1": (5, 8, 8), "stage2": (3, 8, 8), "stage3": (12, 8, 8)}, relu=True)
    (m,) = parse_methods("kdsvd")
    m.select_taps(STAGES3, STAGES4)
    assert m.needs == {"stage1", "stage2", "stage3"}
    m.setup(s, t)
    keys = ("stage1", "stage2", "stage3")

    def reference(a, b, _):  # the larger map pooled to the smaller size first (mdistiller needs equal widths)
        pairs = []
        for key in keys:
            h = min(a[key].shape[2], b[key].shape[2])
            pairs.append((_pool(a[key], h, h), _pool(b[key], h, h)))
        return ref_kdsvd([p[0] for p in pairs], [p[1] for p in pairs], 1, "mdistiller")

    _check(m, s, t, reference)
    (m2,) = parse_methods("kdsvd", {"kdsvd": {"k": 2, "stages": "stage2,stage3", "weight": 3.0}})
    m2.setup(s, t)
    _check(m2, s, t, lambda a, b, _: 3.0 * ref_kdsvd([a["stage2"], a["stage3"]],
                                                      [b["stage2"], _pool(b["stage3"], 4, 4)], 2, "mdistiller"))


def test_kdsvd_paper_layout_matches_repdistiller_and_needs_equal_channels():
    s = _maps(6, {"stage1": (6, 8, 8), "stage2": (8, 4, 4), "stage3": (10, 4, 4)}, True, relu=True)
    t = _maps(7, {"stage1": (6, 4, 4), "stage2": (8, 8, 8), "stage3": (10, 2, 2)}, relu=True)
    (m,) = parse_methods("kdsvd", {"kdsvd": {"layout": "paper"}})
    m.setup(s, t)
    keys = ("stage1", "stage2", "stage3")  # vectors over channels: no pooling
    _check(m, s, t, lambda a, b, _: ref_kdsvd([a[k] for k in keys], [b[k] for k in keys], 1, "paper"))
    t["stage2"] = t["stage2"][:, :4]
    with pytest.raises(UserError, match="layout=mdistiller"):
        m.setup(s, t)


# ---- CC: torchdistill CCKDLoss (Gaussian RBF Taylor series, torch.dist / bsz^2) on Linear4CCKD heads --------
def ref_cc(lin_s, lin_t, gamma, max_p):
    def cc_mat(outputs):
        rows = []
        for out in outputs:
            row, right = 1, out @ outputs.t()
            for p in range(1, max_p + 1):
                row = row + ((2 * gamma) ** p) / math.factorial(p) * right ** p
            rows.append(row * math.exp(-2 * gamma))
        return torch.stack(rows)

    return torch.dist(cc_mat(lin_s), cc_mat(lin_t), 2) / lin_t.shape[0] ** 2


@pytest.mark.parametrize("opts", [{}, {"gamma": 0.7, "max_p": 3, "feat_dim": 5, "weight": 2.0}])
def test_cc_matches_torchdistill_with_both_embedding_heads(opts):
    s, t = _maps(8, {"embedding": (7,)}, True), _maps(9, {"embedding": (11,)})
    (m,) = parse_methods("cc", {"cc": opts} if opts else None)
    m.setup(s, t)
    m.double()
    assert (m.head_s.in_features, m.head_t.in_features, m.head_s.out_features) == (7, 11, opts.get("feat_dim", 128))
    gamma, max_p, weight = opts.get("gamma", 0.4), opts.get("max_p", 2), opts.get("weight", 0.003)
    heads = [m.head_s.weight, m.head_s.bias, m.head_t.weight, m.head_t.bias]

    def reference(a, b, p):
        return weight * ref_cc(a["embedding"] @ p[0].t() + p[1], b["embedding"] @ p[2].t() + p[3], gamma, max_p)

    _check(m, s, t, reference, heads)  # the teacher head trains too


def test_cc_norm_does_not_overflow_float32_for_huge_embeddings():
    """A randomly initialised deep teacher's embeddings reach ~1e9: the squared kernel entries fit in float32,
    the sum of their squares in the Frobenius norm would not."""
    s, t = _maps(14, {"embedding": (7,)}), {"embedding": _maps(15, {"embedding": (11,)})["embedding"] * 1e8}
    (m,) = parse_methods("cc")
    m.setup(s, t)
    x = s["embedding"].float().requires_grad_(True)
    value = m({"embedding": x}, {"embedding": t["embedding"].float()}, None, None)["cc"]
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    p = [q.detach().double() for q in (m.head_s.weight, m.head_s.bias, m.head_t.weight, m.head_t.bias)]
    want = 0.003 * ref_cc(s["embedding"] @ p[0].t() + p[1], t["embedding"] @ p[2].t() + p[3], 0.4, 2)
    assert value.item() == pytest.approx(want.item(), rel=1e-4)


# ---- ICKD: the authors' ICKDLoss.batch_loss after Embed (1x1 conv + BN), feat[-2], weight 2.5 -------------
def ref_ickd(f_s, f_t, conv, bn_w, bn_b, eps):
    x = torch.einsum("oc,nchw->nohw", conv[:, :, 0, 0], f_s)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)  # training BatchNorm: biased batch variance
    x = (x - mean) / torch.sqrt(var + eps) * bn_w.view(1, -1, 1, 1) + bn_b.view(1, -1, 1, 1)
    bsz, ch = x.shape[:2]
    f_s, f_t = x.reshape(bsz, ch, -1), f_t.reshape(bsz, ch, -1)
    e_s = _rownorm(torch.bmm(f_s, f_s.permute(0, 2, 1)), 2)
    e_t = _rownorm(torch.bmm(f_t, f_t.permute(0, 2, 1)), 2)
    return ((e_s - e_t) * (e_s - e_t)).reshape(bsz, -1).sum() / (ch * bsz)


def test_ickd_matches_reference_on_the_last_common_stage():
    s = _maps(10, {"stage3": (6, 8, 8), "stage4": (7, 2, 2)}, True, relu=True)
    t = _maps(11, {"stage2": (4, 8, 8), "stage3": (9, 4, 4)}, relu=True)  # sizes differ: no pooling needed
    (m,) = parse_methods("ickd")
    m.select_taps(STAGES4, STAGES3)
    assert m.needs == {"stage3"}
    m.setup(s, t)
    m.double().train()
    conv, bn = m.embeds[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (6, 9, (1, 1), None)
    with torch.no_grad():  # a BN that is not the identity at initialisation
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    params = [conv.weight, bn.weight, bn.bias]
    _check(m, s, t, lambda a, b, p: 2.5 * ref_ickd(a["stage3"], b["stage3"], *p, bn.eps), params)



def test_ickd_on_small_maps_of_many_channels_takes_the_row_form_and_matches_reference(monkeypatch):
    """Maps of 2 x 2 and 3 x 3 with 40 teacher channels (as 4 x 4 maps of 512 channels): the loss goes through the
    HW x HW products, with a dead teacher channel (a zero row: F.normalize's 0), and matches the C x C reference."""
    import fastkd.methods.ickd as ickd

    real, calls = ickd._row_products, []
    monkeypatch.setattr(ickd, "_row_products", lambda *a: calls.append(1) or real(*a))
    s = _maps(12, {"stage3": (6, 2, 2)}, True, relu=True)
    t = _maps(13, {"stage3": (40, 3, 3)}, relu=True)
    t["stage3"][:, 3] = 0.0
    (m,) = parse_methods("ickd")
    m.select_taps(STAGES3, STAGES3)
    m.setup(s, t)
    m.double().train()
    conv, bn = m.embeds[0]
    _check(m, s, t, lambda a, b, p: 2.5 * ref_ickd(a["stage3"], b["stage3"], *p, bn.eps),
           [conv.weight, bn.weight, bn.bias])
    assert calls

# ---- pair-dependent stages, defaults, precision, errors ---------------------------------------------------
def test_defaults_and_stages_chosen_from_the_pair():
    expected = {
        "sp": ({"weight": 3000.0, "stages": ["stage3"]}, {"stage3"}),
        "nst": ({"weight": 50.0, "stages": ["stage1", "stage2", "stage3"]}, {"stage1", "stage2", "stage3"}),
        "kdsvd": ({"weight": 1.0, "k": 1, "stages": ["stage1", "stage2", "stage3"], "layout": "mdistiller"},
                  {"stage1", "stage2", "stage3"}),
        "cc": ({"weight": 0.003, "gamma": 0.4, "max_p": 2, "feat_dim": 128, "kernel": "gaussian"}, {"embedding"}),
        "ickd": ({"weight": 2.5, "stages": ["stage3"]}, {"stage3"}),
    }
    methods = parse_methods("+".join(expected))
    assert {m.name: (m.options(), m.needs) for m in methods} == expected
    assert all(m.ce_weight == 1.0 for m in methods)
    for m in methods:  # two 4-stage models: the reference's last stage / every stage
        m.select_taps(STAGES4, STAGES4)
    four = {m.name: m.needs for m in methods}
    assert four["sp"] == four["ickd"] == {"stage4"}
    assert four["nst"] == four["kdsvd"] == {"stage1", "stage2", "stage3", "stage4"}
    (fixed,) = parse_methods("sp", {"sp": {"stages": "stage2"}})
    fixed.select_taps(STAGES4, STAGES4)
    assert fixed.needs == {"stage2"}
    assert [m.name for m in parse_methods("spkd+cckd")] == ["sp", "cc"]


@pytest.mark.parametrize("name", ["sp", "nst", "kdsvd", "cc", "ickd"])
def test_half_inputs_give_float32_terms_and_no_teacher_grad(name):
    shapes = {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (8, 4, 4), "embedding": (10,)}
    s32, t32 = _maps(12, shapes, relu=True), _maps(13, shapes, relu=True)
    s = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in s32.items()}
    t = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in t32.items()}
    (m,) = parse_methods(name)
    m.setup(s, t)
    adapted = any(True for _ in m.parameters())  # the trainer's --amp: autocast for methods with adapters
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=adapted):
        (value,) = m(s, t, None, None).values()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(v.grad is None for v in t.values())
    assert any(s[k].grad is not None for k in m.needs)


@pytest.mark.parametrize("name, opts, match", [
    ("sp", {"weight": -1.0}, "loss weight"),
    ("sp", {"stages": "stage5"}, "stage taps"),
    ("sp", {"stage": "stage3"}, "no option"),
    ("nst", {"stages": "embedding"}, "stage taps"),
    ("nst", {"weight": "big"}, "number"),
    ("kdsvd", {"k": 0}, "k must be >= 1"),
    ("kdsvd", {"k": 1.5}, "integer"),
    ("kdsvd", {"layout": "columns"}, "mdistiller, paper"),
    ("kdsvd", {"stages": "stage2"}, "at least two"),
    ("cc", {"gamma": 0.0}, "gamma must be > 0"),
    ("cc", {"max_p": 0}, "max_p must be >= 1"),
    ("cc", {"feat_dim": 0}, "feat_dim must be >= 1"),
    ("cc", {"kernel": "linear"}, "gaussian, bilinear"),
    ("cc", {"weight": float("nan")}, "finite"),
    ("ickd", {"stages": ""}, "stage taps"),
])
def test_bad_options_are_one_line_user_errors(name, opts, match):
    with pytest.raises(UserError, match=match) as err:
        parse_methods(name, {name: opts})
    assert "\n" not in str(err.value)


def test_pairs_without_the_stages_a_method_needs_are_user_errors():
    for name in ("sp", "nst", "ickd"):
        (m,) = parse_methods(name)
        with pytest.raises(UserError, match="both models"):
            m.select_taps({"embedding"}, STAGES4)
    with pytest.raises(UserError, match="two stage taps"):
        KDSVD().select_taps({"stage1", "embedding"}, STAGES4)
    with pytest.raises(UserError, match="N x C x H x W"):
        parse_methods("ickd")[0].setup({"stage3": torch.zeros(2, 8)}, {"stage3": torch.zeros(2, 8)})
