"""dist_plus, skd and srd against float64 transcriptions of their reference code, written out here in plain torch
(torchdistill DISTPlusLoss / DISTLoss, SKDInstanceLoss / SKDDirectionLoss, SRDLoss with SRDModelWrapper and the
SRD authors' OurDistillationLoss): the loss and its gradient w.r.t. the student's signals and the adapters within
1e-9 relative, with the reference's weights and normalisations; defaults, option errors, half precision."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError
from fastkd.methods import parse_methods

REL = 1e-9
N = 6


def _randn(seed, *shape, grad=False):
    x = torch.randn(N, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


def _close(got, want):
    assert abs(got.item() - want.item()) <= REL * abs(want.item()), (got.item(), want.item())


def _check(method, student, teacher, reference, params=(), zero_params=()):
    """The method's summed terms and their gradients (student signals it reads, then ``params``) against
    ``reference(student_copy, teacher, param_copies)``; ``zero_params`` must get a zero gradient (up to rounding).
    Returns the method's terms."""
    terms = method(student, teacher, None, None)
    got = sum(terms.values())
    assert all(v.dtype == torch.float64 for v in terms.values())
    used = sorted(method.needs)
    got_grads = torch.autograd.grad(got, [student[k] for k in used] + list(params) + list(zero_params))
    mine = {k: v.detach().clone().requires_grad_(True) for k, v in student.items()}
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    want = reference(mine, {k: v.detach() for k, v in teacher.items()}, copies)
    want_grads = torch.autograd.grad(want, [mine[k] for k in used] + copies)
    assert want.item() > 0
    _close(got, want)
    for g, w in zip(got_grads, want_grads):
        assert w.norm() > 0
        assert (g - w).norm() <= REL * w.norm(), ((g - w).norm().item(), w.norm().item())
    for g in got_grads[len(want_grads):]:
        assert g.abs().max() < 1e-12
    return terms


# ---- DIST+: torchdistill DISTPlusLoss (DISTLoss + channel_relation + spatial_relation), config weights ----------
def ref_dist_plus_parts(z_s, z_t, f_s, f_t, tau=1.0, eps=1e-8, torchdistill_cosine=True):
    """(inter, intra, channel, spatial) as DISTPlusLoss computes them; ``channel`` is the reference's mean
    correlation itself. ``torchdistill_cosine``: DISTLoss.pearson_correlation via F.cosine_similarity (eps clamps
    the norms); else the DIST authors' cosine_similarity (eps added to the product of the norms, fastkd's dist)."""
    def pearson(a, b):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        if torchdistill_cosine:
            return F.cosine_similarity(a, b, eps=eps)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def inter_class_relation(y_s, y_t):
        return 1 - pearson(y_s, y_t).mean()

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    inter = tau ** 2 * inter_class_relation(y_s, y_t)
    intra = tau ** 2 * inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))
    c_s, c_t = f_s - f_s.mean(dim=1, keepdim=True), f_t - f_t.mean(dim=1, keepdim=True)
    numerator = (c_s * c_t).sum(dim=1)
    denominator = torch.sqrt((c_s ** 2).sum(dim=1) * (c_t ** 2).sum(dim=1))
    channel = (numerator / (denominator + eps)).mean()
    a_s, a_t = f_s.sum(dim=1).flatten(1), f_t.sum(dim=1).flatten(1)
    spatial = inter_class_relation(a_s.transpose(0, 1), a_t.transpose(0, 1))
    return inter, intra, channel, spatial


def ref_dist_plus(parts, beta=2.0, gamma=2.0, iota=1.0, kappa=1.0, weight=2.0):
    """The config's ``weight: 2.0`` times beta*inter + gamma*intra + iota*(1 - channel) + kappa*spatial: the
    reference's sum with the documented sign fix of its channel term."""
    inter, intra, channel, spatial = parts
    return weight * (beta * inter + gamma * intra + iota * (1 - channel) + kappa * spatial)


def _bn_train(x, weight, bias, eps=1e-5):
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_dist_plus_matches_torchdistill_on_equal_maps():
    s = {"logits": _randn(0, 7, grad=True), "stage3": _randn(1, 5, 4, 4, grad=True)}
    t = {"logits": _randn(2, 7), "stage3": _randn(3, 5, 4, 4)}
    (m,) = parse_methods("dist_plus")
    m.setup(s, t)
    assert m.embed is None and not list(m.parameters())  # equal channels: no adapter, as the reference
    terms = _check(m, s, t, lambda a, b, _: ref_dist_plus(ref_dist_plus_parts(
        a["logits"], b["logits"], a["stage3"], b["stage3"], torchdistill_cosine=False)))
    inter, intra, channel, spatial = ref_dist_plus_parts(s["logits"], t["logits"], s["stage3"], t["stage3"])
    assert set(terms) == {f"dist_plus.{k}" for k in ("inter", "intra", "channel", "spatial")}
    _close(terms["dist_plus.channel"], 2.0 * (1 - channel))  # the reference's channel term is +channel
    _close(terms["dist_plus.spatial"], 2.0 * spatial)
    # eps -> 0: torchdistill's F.cosine_similarity form and the DIST authors' form coincide, every term exactly
    (tiny,) = parse_methods("dist_plus", {"dist_plus": {"eps": 1e-30, "temperature": 3.0, "iota": 0.5, "kappa": 3.0}})
    tiny.setup(s, t)
    _check(tiny, s, t, lambda a, b, _: ref_dist_plus(ref_dist_plus_parts(
        a["logits"], b["logits"], a["stage3"], b["stage3"], tau=3.0, eps=1e-30), iota=0.5, kappa=3.0))


def test_dist_plus_embeds_other_channels_and_pools_the_larger_map():
    s = {"logits": _randn(4, 7, grad=True), "stage2": _randn(5, 4, 8, 8, grad=True)}
    t = {"logits": _randn(6, 7), "stage2": _randn(7, 6, 4, 4)}
    (m,) = parse_methods("dist_plus", {"dist_plus": {"stage": "stage2"}})
    m.setup(s, t)
    m.double()
    with torch.no_grad():  # a BN that is not the identity
        m.embed[1].weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(8))
        m.embed[1].bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(9))
    conv, bn = m.embed[0].weight, m.embed[1]

    def reference(a, b, p):
        w, gamma, beta = p
        f = _bn_train(torch.einsum("oi,nihw->nohw", w[:, :, 0, 0], a["stage2"]), gamma, beta)
        f = f.reshape(N, 6, 4, 2, 4, 2).mean(dim=(3, 5))  # adaptive average pooling 8x8 -> 4x4
        return ref_dist_plus(ref_dist_plus_parts(a["logits"], b["logits"], f, b["stage2"], torchdistill_cosine=False))

    _check(m, s, t, reference, params=[conv, bn.weight, bn.bias])


def test_dist_plus_stage_auto_defaults_and_errors():
    (m,) = parse_methods("distplus")
    assert m.name == "dist_plus" and m.ce_weight == 1.0 and m.cacheable and m.peers == {"torchdistill"}
    assert m.options() == {"beta": 2.0, "gamma": 2.0, "iota": 1.0, "kappa": 1.0, "temperature": 1.0, "weight": 2.0,
                           "eps": 1e-8, "stage": "stage3"}
    m.select_taps({"stage1", "stage2", "stage3", "stage4", "embedding"}, {"stage1", "stage2", "stage3", "stage4"})
    assert m.needs == {"logits", "stage4"}  # torchdistill's layer4: the last stage both have
    m.select_taps({"stage1", "stage2", "stage3"}, {"stage1", "stage2", "stage3", "stage4"})
    assert m.needs == {"logits", "stage3"}
    with pytest.raises(UserError, match="stage tap"):
        m.select_taps({"embedding"}, {"stage1"})
    for opts in ({"gamma": -1.0}, {"iota": -0.5}, {"kappa": -2.0}, {"beta": -1.0}, {"temperature": 0},
                 {"stage": "stage9"}, {"weight": "heavy"}, {"tau": 1.0}):
        with pytest.raises(UserError, match="dist_plus"):
            parse_methods("dist_plus", {"dist_plus": opts})


# ---- SKD: torchdistill SKDInstanceLoss + SKDDirectionLoss, both weight 1 (skd/resnet18_from_resnet34.yaml) -------
def ref_skd_instance(z_s, z_t, temperature=4.0):
    log_p_student = torch.log_softmax(z_s / temperature, dim=1)
    p_teacher = torch.softmax(z_t / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")


def ref_skd_direction(z_s, z_t, tikhonov=0.1):
    student_gram, teacher_gram = F.normalize(z_s, p=2, dim=1), F.normalize(z_t, p=2, dim=1)
    student_gram = torch.mm(student_gram, student_gram.t())
    teacher_gram = torch.mm(teacher_gram, teacher_gram.t())
    diff = student_gram - teacher_gram
    cov_matrix = torch.cov(diff.t()) + tikhonov * torch.eye(diff.size(1), dtype=diff.dtype)
    inv_cov_matrix = torch.cholesky_inverse(torch.linalg.cholesky(cov_matrix))
    mahalanobis_dist = torch.einsum("bi,ij,bj->b", diff, inv_cov_matrix, diff)
    return torch.sqrt(mahalanobis_dist).mean()


def test_skd_matches_torchdistill():
    s, t = {"logits": _randn(10, 9, grad=True)}, {"logits": _randn(11, 9)}
    (m,) = parse_methods("skd")
    terms = _check(m, s, t, lambda a, b, _: ref_skd_instance(a["logits"], b["logits"])
                   + ref_skd_direction(a["logits"], b["logits"]))
    _close(terms["skd.instance"], ref_skd_instance(s["logits"], t["logits"]))
    _close(terms["skd.direction"], ref_skd_direction(s["logits"], t["logits"]))
    (other,) = parse_methods("skd", {"skd": {"temperature": 2.0, "tikhonov": 0.01, "instance_weight": 0.5,
                                             "direction_weight": 3.0}})
    _check(other, s, t, lambda a, b, _: 0.5 * ref_skd_instance(a["logits"], b["logits"], 2.0)
           + 3.0 * ref_skd_direction(a["logits"], b["logits"], 0.01))


def test_skd_defaults_errors_and_a_batch_of_one():
    (m,) = parse_methods("skd")
    assert m.options() == {"temperature": 4.0, "tikhonov": 0.1, "instance_weight": 1.0, "direction_weight": 1.0}
    assert m.ce_weight == 0.0 and m.needs == {"logits"} and m.cacheable and m.peers == {"torchdistill"}
    for opts in ({"tikhonov": 0.0}, {"tikhonov": -1.0}, {"temperature": 0}, {"instance_weight": -1.0},
                 {"direction_weight": -1.0}, {"weight": 1.0}):
        with pytest.raises(UserError, match="skd"):
            parse_methods("skd", {"skd": opts})
    z = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    terms = m({"logits": z}, {"logits": torch.randn(1, 5, dtype=torch.float64)}, None, None)
    assert terms["skd.direction"].item() == 0.0 and torch.isfinite(terms["skd.instance"])
    sum(terms.values()).backward()
    assert torch.isfinite(z.grad).all()


# ---- SRD: torchdistill SRDLoss on SRDModelWrapper's norm_layer outputs (the authors' OurDistillationLoss) --------
def ref_srd(emb_s, emb_t, z_s, z_t, linear_weight, linear_bias, exponent=4.0, temperature=1.0):
    """SRDModelWrapper.secondary_forward (pooled features -> student Linear -> BatchNorm1d(eps 1e-4, affine
    False), training mode) and SRDLoss.forward: 2 * log(sum |f_s - f_t|^p) + KLDivLoss(batchmean) at T."""
    norm_s = nn.BatchNorm1d(emb_t.shape[1], eps=0.0001, affine=False).double().train()
    norm_t = nn.BatchNorm1d(emb_t.shape[1], eps=0.0001, affine=False).double().train()
    student_features = norm_s(F.linear(emb_s, linear_weight, linear_bias))
    teacher_features = norm_t(emb_t)
    diff_features = torch.abs(student_features - teacher_features)
    feat_distill_loss = torch.log(diff_features.pow(exponent).sum())
    kl_loss = nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(z_s / temperature, dim=1),
                                                  torch.softmax(z_t / temperature, dim=1))
    return 2 * feat_distill_loss + kl_loss


def test_srd_matches_torchdistill():
    s = {"embedding": _randn(20, 5, grad=True), "logits": _randn(21, 7, grad=True)}
    t = {"embedding": _randn(22, 8), "logits": _randn(23, 7)}
    (m,) = parse_methods("srd")
    m.setup(s, t)
    m.double()
    assert tuple(m.projector.weight.shape) == (8, 5)  # student width -> teacher width
    w, b = m.projector.weight, m.projector.bias

    def reference(a, c, p):
        return ref_srd(a["embedding"], c["embedding"], a["logits"], c["logits"], p[0], b.detach())

    # the batch normalisation removes the projector's bias: its gradient is zero, as in the reference
    terms = _check(m, s, t, reference, params=[w], zero_params=[b])
    assert set(terms) == {"srd.feat", "srd.kd"}
    kl = nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s["logits"], 1), torch.softmax(t["logits"], 1))
    _close(terms["srd.kd"], kl)


def test_srd_defaults_errors_and_no_teacher_part():
    (m,) = parse_methods("srd")
    assert m.options() == {"exponent": 4.0, "temperature": 1.0, "feat_weight": 2.0, "kd_weight": 1.0, "eps": 1e-4}
    assert m.ce_weight == 1.0 and m.needs == {"embedding", "logits"} and m.peers == {"torchdistill"}
    # SRD applies no part of the teacher network (its teacher side is the pooled features and the logits)
    assert m.cacheable and not m.expands
    for opts in ({"exponent": 0.0}, {"temperature": 0}, {"feat_weight": -1.0}, {"kd_weight": -1.0},
                 {"eps": 0.0}, {"weight": 1.0}):
        with pytest.raises(UserError, match="srd"):
            parse_methods("srd", {"srd": opts})
    m.setup({"embedding": torch.zeros(2, 4)}, {"embedding": torch.zeros(2, 6)})
    with pytest.raises(UserError, match="N x D"):
        m.setup({"embedding": torch.zeros(2, 4, 3, 3)}, {"embedding": torch.zeros(2, 6)})
    one = m({"embedding": torch.randn(1, 4), "logits": torch.randn(1, 3)},
            {"embedding": torch.randn(1, 6), "logits": torch.randn(1, 3)}, None, None)
    assert one["srd.feat"].item() == 0.0 and torch.isfinite(one["srd.kd"])  # a batch of one: no batch statistics


# ---- every method: half-precision inputs give finite float32 terms --------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["dist_plus", "skd", "srd"])
def test_half_precision_inputs_give_finite_float32_terms(name, dtype):
    g = torch.Generator().manual_seed(30)
    s = {"logits": torch.randn(N, 7, generator=g), "stage3": torch.randn(N, 4, 4, 4, generator=g),
         "embedding": torch.randn(N, 5, generator=g)}
    t = {"logits": torch.randn(N, 7, generator=g), "stage3": torch.randn(N, 6, 2, 2, generator=g),
         "embedding": torch.randn(N, 8, generator=g)}
    (m,) = parse_methods(name)
    m.setup(s, t)
    s = {k: v.to(dtype).requires_grad_(True) for k, v in s.items()}
    terms = m(s, {k: v.to(dtype) for k, v in t.items()}, None, None)
    assert terms and all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values()), terms
    sum(terms.values()).backward()
    assert all(torch.isfinite(s[k].grad).all() for k in m.needs)


def test_skd_direction_of_a_student_equal_to_its_teacher_is_zero_with_a_finite_gradient():
    """A student whose logits equal the teacher's (self-distillation from a copy) makes every row of D zero: the
    distance is 0 and its gradient 0, not the NaN of the square root's derivative at 0."""
    (skd,) = parse_methods("skd")
    z = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = z.clone().requires_grad_(True)
    terms = skd({"logits": s}, {"logits": z}, None, None)
    assert terms["skd.direction"].item() == 0.0
    terms["skd.direction"].backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().max().item() == 0.0
