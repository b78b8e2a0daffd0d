"""vid, pad_l2, fsp and tfkd against float64 transcriptions of their reference code, written out here in plain
torch (mdistiller ``vid_loss`` with the ``VID`` regressors, torchdistill ``PADL2Loss`` with ``VarianceBranch4PAD``,
``FSPLoss.compute_fsp_matrix`` / ``FSPLoss.forward`` and ``KDLoss``): the loss and its gradient w.r.t. the student's
signals and the adapters within 1e-9 relative; their defaults, pair-dependent stages, stage schedules,
half-precision inputs and option errors."""
from __future__ import annotations

import pytest
import torch

from fastkd.errors import UserError
from fastkd.methods import parse_methods
from test_methods_similarity import _maps  # N x shape float64 maps, N = 6 there too

REL = 1e-9
N = 6
STAGES4 = {"stage1", "stage2", "stage3", "stage4", "embedding", "logits"}
STAGES3 = {"stage1", "stage2", "stage3", "embedding", "logits"}


def _check(method, student, teacher, reference, extra=(), labels=None, ce_weight=0.0):
    """``ce_weight`` * CE + the method's one term, and its gradients (the student signals the method reads, then
    ``extra`` parameters), against ``reference(student_copy, teacher, extra_copies)``."""
    terms = method(student, teacher, labels, None)
    (name,) = terms
    got = terms[name]
    assert got.dtype == torch.float64
    if ce_weight:
        got = got + ce_weight * torch.nn.functional.cross_entropy(student["logits"], labels)
    used = sorted(method.needs)
    got_grads = torch.autograd.grad(got, [student[k] for k in used] + list(extra))
    mine = {k: v.detach().clone().requires_grad_(True) for k, v in student.items()}
    params = [p.detach().clone().requires_grad_(True) for p in extra]
    want = reference(mine, {k: v.detach() for k, v in teacher.items()}, params)
    want_grads = torch.autograd.grad(want, [mine[k] for k in used] + params)
    assert want.item() != 0
    assert abs(got.item() - want.item()) <= REL * abs(want.item()), (name, got.item(), want.item())
    for g, w in zip(got_grads, want_grads):
        assert w.norm() > 0
        assert (g - w).norm() <= REL * w.norm(), (name, (g - w).norm().item(), w.norm().item())
    return want.item()


def _avg_pool(x, h, w):
    n, c, big_h, big_w = x.shape
    return x.reshape(n, c, h, big_h // h, w, big_w // w).mean(dim=(3, 5))


def _max_pool(x, h, w):
    n, c, big_h, big_w = x.shape
    return x.reshape(n, c, h, big_h // h, w, big_w // w).amax(dim=(3, 5))


def _conv1x1(weight, x):
    return torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x)


# ---- VID: mdistiller vid_loss (square pooling first, conv-relu-conv-relu-conv, softplus variance) -----------
def ref_vid(f_s, f_t, w1, w2, w3, log_scale, eps=1e-5):
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = _avg_pool(f_s, t_h, t_h)
    elif s_h < t_h:
        f_t = _avg_pool(f_t, s_h, s_h)
    pred_mean = _conv1x1(w3, _conv1x1(w2, _conv1x1(w1, f_s).clamp_min(0)).clamp_min(0))
    pred_var = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1)
    neg_log_prob = 0.5 * ((pred_mean - f_t) ** 2 / pred_var + torch.log(pred_var))
    return torch.mean(neg_log_prob)


def test_vid_matches_mdistiller_over_every_common_stage_with_learned_variances():
    s = _maps(0, {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (8, 4, 4), "stage4": (8, 2, 2)}, True, True)
    t = _maps(1, {"stage1": (5, 4, 4), "stage2": (3, 8, 8), "stage3": (7, 4, 4)}, relu=True)
    (m,) = parse_methods("vid")
    m.select_taps(STAGES4, STAGES3)  # every stage both have: mdistiller's feats[1:] of a 3-stage pair
    assert m.needs == {"stage1", "stage2", "stage3"}
    m.setup(s, t)
    m.double()
    keys = ("stage1", "stage2", "stage3")
    for head, key in zip(m.heads, keys):
        convs = [head.mean[0], head.mean[2], head.mean[4]]
        assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
            (s[key].shape[1], t[key].shape[1], (1, 1), None), (t[key].shape[1],) * 2 + ((1, 1), None),
            (t[key].shape[1],) * 2 + ((1, 1), None)]
        start = torch.log(1.0 + torch.exp(head.log_scale)) + 1e-5  # the initial variance is init_pred_var
        assert torch.allclose(start, torch.full_like(start, 5.0), rtol=1e-6)  # (a float32 parameter)
        with torch.no_grad():
            head.log_scale.add_(torch.randn(head.log_scale.shape, dtype=torch.float64))  # per-channel variances
    params = [p for h in m.heads for p in (h.mean[0].weight, h.mean[2].weight, h.mean[4].weight, h.log_scale)]

    def reference(a, b, p):
        return sum(ref_vid(a[k], b[k], *p[4 * i: 4 * i + 4]) for i, k in enumerate(keys))

    _check(m, s, t, reference, params)
    (two,) = parse_methods("vid", {"vid": {"stages": "stage2", "weight": 3.0, "init_pred_var": 2.0, "eps": 1e-3}})
    two.setup(s, t)
    two.double()
    h = two.heads[0]
    assert torch.allclose(torch.log(1 + torch.exp(h.log_scale)) + 1e-3, torch.full((3,), 2.0, dtype=torch.float64),
                          rtol=1e-6)
    _check(two, s, t, lambda a, b, p: 3.0 * ref_vid(a["stage2"], b["stage2"], *p, eps=1e-3),
           [h.mean[0].weight, h.mean[2].weight, h.mean[4].weight, h.log_scale])


# ---- PAD-L2: torchdistill PADL2Loss on VarianceBranch4PAD (Linear + training BatchNorm1d) -----------------
def ref_pad_l2(student_embed, teacher_embed, weight, bn_w, bn_b, bn_eps, eps=1e-6, bias=0.0):
    x = student_embed @ weight.t() + bias
    mean = x.mean(dim=0, keepdim=True)
    var = (x - mean).pow(2).mean(dim=0, keepdim=True)  # training BatchNorm: biased batch variance
    log_variances = (x - mean) / torch.sqrt(var + bn_eps) * bn_w + bn_b
    squared_losses = torch.mean((teacher_embed - student_embed) ** 2 / (eps + torch.exp(log_variances))
                                + log_variances, dim=1)
    return squared_losses.mean()


def _pad(opts=None, d_s=9, d_t=9):
    s, t = _maps(2, {"embedding": (d_s,)}, True), _maps(3, {"embedding": (d_t,)}, relu=True)
    (m,) = parse_methods("pad", {"pad_l2": opts} if opts else None)
    m.setup(s, t)
    m.double().train()
    linear, bn = m.var_estimator
    assert (linear.in_features, linear.out_features, bn.num_features) == (d_s, d_t, d_t)
    with torch.no_grad():  # a BN that is not the identity at initialisation
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    # the Linear's bias is checked through the value only: the training BN removes it (its gradient is rounding)
    return m, s, t, [linear.weight, bn.weight, bn.bias], bn.eps


def test_pad_l2_matches_torchdistill_with_its_variance_branch():
    m, s, t, params, bn_eps = _pad()
    assert not any(True for _ in m.connector.parameters())  # equal widths: the reference's identity
    bias = m.var_estimator[0].bias.detach()
    _check(m, s, t, lambda a, b, p: ref_pad_l2(a["embedding"], b["embedding"], *p, bn_eps, bias=bias), params)
    m, s, t, params, bn_eps = _pad({"weight": 2.0, "eps": 1e-3})
    bias = m.var_estimator[0].bias.detach()
    _check(m, s, t, lambda a, b, p: 2.0 * ref_pad_l2(a["embedding"], b["embedding"], *p, bn_eps, eps=1e-3, bias=bias),
           params)


def test_pad_l2_connects_other_widths_with_a_linear_layer():
    m, s, t, params, bn_eps = _pad(d_s=7, d_t=11)
    conn = m.connector
    assert (conn.in_features, conn.out_features) == (7, 11)

    bias = m.var_estimator[0].bias.detach()

    def reference(x, target, p):  # the branch reads the student's embedding, the connector regresses it
        w, bn_w, bn_b, cw, cb = p
        h = x @ w.t() + bias
        mean = h.mean(dim=0, keepdim=True)
        var = (h - mean).pow(2).mean(dim=0, keepdim=True)
        log_var = (h - mean) / torch.sqrt(var + bn_eps) * bn_w + bn_b
        regressed = x @ cw.t() + cb
        return torch.mean((target - regressed) ** 2 / (1e-6 + torch.exp(log_var)) + log_var, dim=1).mean()

    _check(m, s, t, lambda a, b, p: reference(a["embedding"], b["embedding"], p),
           params + [conn.weight, conn.bias])


def test_pad_l2_runs_the_l2_stage_first_and_no_epoch_is_exclusive():
    m, s, t, _, _ = _pad({"l2_epochs": 3})
    for epoch in range(3):  # stage 1: CE + 15 * MSELoss (mean) of the embeddings (torchdistill cse_l2)
        m.set_epoch(epoch)
        assert not m.exclusive
        _check(m, s, t, lambda a, b, p: 15.0 * ((a["embedding"] - b["embedding"]) ** 2).mean())
    for epoch in (3, 50):
        m.set_epoch(epoch)
        assert not m.exclusive and set(m(s, t, None, None)) == {"pad_l2"}
    assert not m.has_stages()
    default = parse_methods("pad_l2")[0]
    default.setup(s, t)
    default.double()
    default.set_epoch(0)
    assert set(default(s, t, None, None)) == {"pad_l2"}  # l2_epochs=0: PAD-L2 from the first epoch


# ---- FSP: torchdistill FSPLoss (max-pooled to the smaller map, column L2 norms summed, / batch) ------------
def ref_fsp_matrix(first, second):
    first_h, first_w = first.shape[2:4]
    second_h, second_w = second.shape[2:4]
    target_h, target_w = min(first_h, second_h), min(first_w, second_w)
    if first_h > target_h or first_w > target_w:
        first = _max_pool(first, target_h, target_w)
    if second_h > target_h or second_w > target_w:
        second = _max_pool(second, target_h, target_w)
    first, second = first.flatten(2), second.flatten(2)
    return torch.matmul(first, second.transpose(1, 2)) / first.shape[2]


def ref_fsp(student_maps, teacher_maps):
    fsp_loss = 0
    for k in range(len(student_maps) - 1):
        g_s = ref_fsp_matrix(student_maps[k], student_maps[k + 1])
        g_t = ref_fsp_matrix(teacher_maps[k], teacher_maps[k + 1])
        fsp_loss += (g_s - g_t).norm(dim=1).sum()
    return fsp_loss / student_maps[0].shape[0]


def test_fsp_matches_torchdistill_on_consecutive_stages_of_equal_channels():
    # no ReLU on the student's maps: ties in max pooling (zeros) would route the gradient to either element
    s = _maps(4, {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (5, 4, 4), "stage4": (3, 2, 2)}, True)
    t = _maps(5, {"stage1": (4, 16, 16), "stage2": (6, 8, 8), "stage3": (5, 2, 2), "stage4": (3, 2, 2)}, relu=True)
    (m,) = parse_methods("fsp")
    m.select_taps(STAGES4, STAGES4)
    assert m.needs == {"stage1", "stage2", "stage3", "stage4"}
    m.setup(s, t)
    m.double()
    assert not any(True for _ in m.parameters())  # equal channels: no adapter, as the reference
    keys = ("stage1", "stage2", "stage3", "stage4")
    _check(m, s, t, lambda a, b, _: ref_fsp([a[k] for k in keys], [b[k] for k in keys]))
    (two,) = parse_methods("fsp", {"fsp": {"stages": "stage3,stage1", "weight": 0.5}})
    two.setup(s, t)
    assert two.stages == ("stage1", "stage3")  # in stage order
    _check(two, s, t, lambda a, b, _: 0.5 * ref_fsp([a["stage1"], a["stage3"]], [b["stage1"], b["stage3"]]))


def test_fsp_adapts_other_channel_counts_with_1x1_convolutions():
    s = _maps(6, {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (5, 4, 4)}, True)
    t = _maps(7, {"stage1": (4, 4, 4), "stage2": (9, 4, 4), "stage3": (3, 2, 2)}, relu=True)
    (m,) = parse_methods("fsp")
    m.setup(s, t)
    m.double()
    assert sorted(m.embeds) == ["stage2", "stage3"]  # stage1's counts agree
    convs = [m.embeds["stage2"], m.embeds["stage3"]]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [(6, 9, (1, 1), None),
                                                                                     (5, 3, (1, 1), None)]

    def reference(a, b, p):
        maps = [a["stage1"], _conv1x1(p[0], a["stage2"]), _conv1x1(p[1], a["stage3"])]
        return ref_fsp(maps, [b["stage1"], b["stage2"], b["stage3"]])

    _check(m, s, t, reference, [c.weight for c in convs])


def test_fsp_stage1_is_exclusive_then_the_run_trains_on_ce():
    s = _maps(8, {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (5, 4, 4)}, True)
    (m,) = parse_methods("fsp")
    m.setup(s, s)
    assert m.has_stages() and m.stage1_epochs == 5
    for epoch in range(5):  # torchdistill's stage 1: the FSP loss alone (org_term factor 0)
        m.set_epoch(epoch)
        assert m.exclusive and set(m(s, s, None, None)) == {"fsp"}
    for epoch in (5, 6, 1000):  # its stage 2: CE alone
        m.set_epoch(epoch)
        assert not m.exclusive and m(s, s, None, None) == {}
    (one,) = parse_methods("fsp", {"fsp": {"stage1_epochs": 0}})
    one.setup(s, s)
    assert not one.has_stages()
    for epoch in (0, 7):  # one-stage FSP: added to CE every epoch
        one.set_epoch(epoch)
        assert not one.exclusive and set(one(s, s, None, None)) == {"fsp"}


# ---- Tf-KD (self): torchdistill KDLoss, alpha * CE + (1 - alpha) * T^2 * KLDivLoss(batchmean) ---------------
def ref_kd_loss(student_logits, teacher_logits, targets, temperature, alpha):
    log_q = student_logits / temperature - torch.logsumexp(student_logits / temperature, dim=1, keepdim=True)
    p = torch.exp(teacher_logits / temperature - torch.logsumexp(teacher_logits / temperature, dim=1, keepdim=True))
    soft_loss = (p * (torch.log(p) - log_q)).sum() / student_logits.shape[0]  # KLDivLoss(reduction='batchmean')
    log_y = student_logits - torch.logsumexp(student_logits, dim=1, keepdim=True)
    hard_loss = -log_y[torch.arange(len(targets)), targets].mean()
    beta = 1 - alpha
    return alpha * hard_loss + beta * (temperature ** 2) * soft_loss


@pytest.mark.parametrize("temperature", [None, 20.0])
def test_tfkd_is_torchdistills_kd_loss_from_the_self_teacher(temperature):
    s, t = _maps(9, {"logits": (10,)}, True), _maps(10, {"logits": (10,)})
    t["logits"] = t["logits"] * 3
    labels = torch.tensor([0, 3, 9, 2, 2, 5])
    (m,) = parse_methods("tf_kd", {"tfkd": {"temperature": temperature}} if temperature else None)
    assert m.name == "tfkd" and m.ce_weight == 0.9  # alpha: 0.9 on the hard labels
    T = temperature or 1.0  # the rrpr2020 config: temperature 1.0
    _check(m, s, t, lambda a, b, _: ref_kd_loss(a["logits"], b["logits"], labels, T, 0.9), labels=labels,
           ce_weight=m.ce_weight)


# ---- defaults, pairs, precision, errors ---------------------------------------------------------------------
def test_defaults_are_the_references_and_stages_follow_the_pair():
    expected = {
        "vid": ({"weight": 1.0, "init_pred_var": 5.0, "eps": 1e-5, "stages": ["stage1", "stage2", "stage3"]}, 1.0,
                {"stage1", "stage2", "stage3"}),
        "pad_l2": ({"weight": 1.0, "eps": 1e-6, "l2_epochs": 0, "l2_weight": 15.0}, 1.0, {"embedding"}),
        "fsp": ({"weight": 1.0, "stages": ["stage1", "stage2", "stage3"], "stage1_epochs": 5}, 1.0,
                {"stage1", "stage2", "stage3"}),
        "tfkd": ({"temperature": 1.0, "weight": 0.1}, 0.9, {"logits"}),
    }
    methods = parse_methods("vid+pad+fsp+tfkd_self")
    assert {m.name: (m.options(), m.ce_weight, m.needs) for m in methods} == expected
    assert all(m.cacheable for m in methods)
    assert {m.name: m.paper for m in methods} == {"vid": "Ahn et al. 2019", "pad_l2": "Zhang et al. 2020",
                                                  "fsp": "Yim et al. 2017", "tfkd": "Yuan et al. 2020"}
    assert methods[0].peers == {"mdistiller", "torchdistill"} and all(m.peers == {"torchdistill"} for m in methods[1:])
    for m in methods:
        m.select_taps(STAGES4, STAGES4)
    assert methods[0].needs == methods[2].needs == {"stage1", "stage2", "stage3", "stage4"}
    (fixed,) = parse_methods("vid", {"vid": {"stages": "stage4"}})
    fixed.select_taps(STAGES4, STAGES3)
    assert fixed.needs == {"stage4"}


@pytest.mark.parametrize("name", ["vid", "pad_l2", "fsp", "tfkd"])
def test_half_inputs_give_float32_terms_and_no_teacher_grad(name):
    shapes = {"stage1": (4, 8, 8), "stage2": (6, 4, 4), "stage3": (8, 4, 4), "embedding": (10,), "logits": (5,)}
    s32 = _maps(11, shapes, relu=True)
    t32 = _maps(12, {**shapes, "stage2": (3, 8, 8), "embedding": (12,)}, relu=True)  # adapters in play
    s = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in s32.items()}
    t = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in t32.items()}
    (m,) = parse_methods(name)
    m.setup(s, t)
    adapted = any(True for _ in m.parameters())  # the trainer's --amp: autocast for methods with adapters
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=adapted):
        (value,) = m(s, t, torch.tensor([0, 1, 2, 3, 4, 0]), None).values()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(v.grad is None for v in t.values())
    assert all(s[k].grad is not None for k in m.needs)


@pytest.mark.parametrize("name, opts, match", [
    ("vid", {"eps": 0.0}, "must be > 0"),
    ("vid", {"init_pred_var": 1e-5}, "init_pred_var must be > vid.eps"),
    ("vid", {"stages": "stage5"}, "stage taps"),
    ("vid", {"weight": -1.0}, "loss weight"),
    ("pad_l2", {"eps": -1.0}, "must be > 0"),
    ("pad_l2", {"l2_epochs": -1}, "l2_epochs must be >= 0"),
    ("pad_l2", {"l2_epochs": 1.5}, "integer"),
    ("pad_l2", {"l2_weight": -2.0}, "loss weight"),
    ("fsp", {"stages": "stage2"}, "at least two"),
    ("fsp", {"stages": "logits,stage2"}, "stage taps"),
    ("fsp", {"stage1_epochs": -1}, "stage1_epochs must be >= 0"),
    ("fsp", {"stage1_epochs": "five"}, "number"),
    ("tfkd", {"temperature": 0.0}, "must be > 0"),
    ("tfkd", {"alpha": 0.5}, "no option"),
])
def test_bad_options_are_one_line_user_errors(name, opts, match):
    with pytest.raises(UserError, match=match) as err:
        parse_methods(name, {name: opts})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make", [
    lambda: parse_methods("vid")[0].__class__(eps=0.0),
    lambda: parse_methods("vid")[0].__class__(init_pred_var=0.5, eps=1.0),
    lambda: parse_methods("pad_l2")[0].__class__(l2_epochs=-1),
    lambda: parse_methods("fsp")[0].__class__(stages=["stage3"]),
    lambda: parse_methods("fsp")[0].__class__(stage1_epochs=-2),
    lambda: parse_methods("tfkd")[0].__class__(temperature=-1.0),
])
def test_constructors_check_their_options_too(make):
    with pytest.raises(UserError):
        make()


def test_pairs_without_the_stages_a_method_needs_are_user_errors():
    with pytest.raises(UserError, match="both models"):
        parse_methods("vid")[0].select_taps({"embedding"}, STAGES4)
    with pytest.raises(UserError, match="two stage taps"):
        parse_methods("fsp")[0].select_taps({"stage1", "embedding"}, STAGES4)
    for name in ("vid", "fsp"):
        with pytest.raises(UserError, match="N x C x H x W"):
            parse_methods(name)[0].setup({k: torch.zeros(2, 8) for k in STAGES3},
                                         {k: torch.zeros(2, 8) for k in STAGES3})
    with pytest.raises(RuntimeError, match="setup"):
        parse_methods("pad_l2")[0]({"embedding": torch.zeros(2, 3)}, {"embedding": torch.zeros(2, 3)}, None)
