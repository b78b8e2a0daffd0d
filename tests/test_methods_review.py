"""reviewkd and kta against float64 transcriptions of their reference code, written out here in plain torch
(mdistiller ReviewKD.py: ABF, hcl_loss and the warm-up with its 1-based epoch; torchdistill's
Paraphraser4FactorTransfer, Student4KTAAD, KTALoss, AffinityLoss, RegularizationLoss and the KTAAD two-stage
config): the loss and its gradient w.r.t. the student's signals and the adapters within 1e-9 relative; defaults,
pair-dependent taps, the stage schedule, checkpoints, half-precision inputs and option errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastkd.errors import UserError
from fastkd.methods import parse_methods

REL = 1e-9
N = 6
PRE4 = {"pre1", "pre2", "pre3", "pre4", "stage1", "stage2", "stage3", "stage4", "embedding"}
PRE3 = {"pre1", "pre2", "pre3", "stage1", "stage2", "stage3", "embedding"}


def _maps(seed, shapes, grad=False):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(N, *shape, generator=g, dtype=torch.float64).requires_grad_(grad)
            for k, shape in shapes.items()}


def _randomise_bn(module):
    """BatchNorms that are not the identity: affine parameters and running statistics drawn at random."""
    g = torch.Generator().manual_seed(7)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g, dtype=bn.weight.dtype) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=bn.bias.dtype))
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g, dtype=bn.running_mean.dtype))
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g, dtype=bn.running_var.dtype) + 0.5)


def _bn_train(x, w, b, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)  # biased batch variance
    return (x - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


def _bn_eval(x, w, b, mean, var, eps=1e-5):
    return (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps) * w.view(1, -1, 1, 1) \
        + b.view(1, -1, 1, 1)


def _leaves(params):
    return [p.detach().clone().requires_grad_(True) for p in params]


def _compare(got, got_inputs, want, want_inputs):
    """Loss values and gradients (w.r.t. the paired input lists) within REL."""
    assert got.dtype == torch.float64 and want.item() > 0
    assert abs(got.item() - want.item()) <= REL * abs(want.item()), (got.item(), want.item())
    for g, w in zip(torch.autograd.grad(got, got_inputs), torch.autograd.grad(want, want_inputs)):
        assert w.norm() > 0
        assert (g - w).norm() <= REL * w.norm(), ((g - w).norm().item(), w.norm().item())


# ---- ReviewKD: mdistiller ReviewKD.forward_train with its ABF and hcl_loss ----------------------------------
def ref_hcl_loss(fstudent, fteacher):
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (l, l)), F.adaptive_avg_pool2d(ft, (l, l))) * cnt
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all


def ref_abf(p, x, y, shape, out_shape):
    """mdistiller ABF.forward; ``p`` = [conv1 w, bn1 w, bn1 b, conv2 w, bn2 w, bn2 b, (att w, att b)]."""
    n, _, h, w = x.shape
    x = _bn_train(F.conv2d(x, p[0]), p[1], p[2])
    if len(p) > 6:
        y = F.interpolate(y, (shape, shape), mode="nearest")
        z = torch.sigmoid(F.conv2d(torch.cat([x, y], dim=1), p[6], p[7]))
        x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
    if x.shape[-1] != out_shape:
        x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
    return _bn_train(F.conv2d(x, p[3], padding=1), p[4], p[5]), x


def ref_reviewkd(s, t, abf_params, levels, shapes, out_shapes, weight, epoch_1based, warmup):
    """forward_train: student feats + pooled_feat reversed, abfs[::-1], teacher feats + pooled_feat."""
    x = [s[k] for k in levels] + [s["embedding"].unsqueeze(-1).unsqueeze(-1)]
    x = x[::-1]
    abfs = abf_params[::-1]
    results = []
    out_features, res_features = ref_abf(abfs[0], x[0], None, shapes[0], out_shapes[0])
    results.append(out_features)
    for features, p, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out_features, res_features = ref_abf(p, features, res_features, shape, out_shape)
        results.insert(0, out_features)
    teacher = [t[k] for k in levels] + [t["embedding"].unsqueeze(-1).unsqueeze(-1)]
    return weight * min(epoch_1based / warmup, 1.0) * ref_hcl_loss(results, teacher)


def _abf_params(m):
    out = []
    for abf in m.abfs:
        p = [abf.reduce[0].weight, abf.reduce[1].weight, abf.reduce[1].bias,
             abf.out[0].weight, abf.out[1].weight, abf.out[1].bias]
        if abf.attention is not None:
            p += [abf.attention[0].weight, abf.attention[0].bias]
        out.append(p)
    return out


# student levels 8, 4, 2 and 1 (the embedding); the teacher's 4, 8, 2, 1: the ABF outputs are resized to them
S_SHAPES = {"pre1": (4, 8, 8), "pre2": (6, 4, 4), "pre3": (8, 2, 2), "embedding": (10,)}
T_SHAPES = {"pre1": (5, 4, 4), "pre2": (7, 8, 8), "pre3": (9, 2, 2), "embedding": (12,)}


def _reviewkd(opts=None, s_shapes=S_SHAPES, t_shapes=T_SHAPES):
    s, t = _maps(0, s_shapes, grad=True), _maps(1, t_shapes)
    (m,) = parse_methods("reviewkd", {"reviewkd": opts or {}})
    m.select_taps(PRE4, PRE3)
    m.setup(s, t)
    m.double().train()
    _randomise_bn(m)
    return m, s, t


def test_reviewkd_matches_mdistiller_with_resized_levels():
    m, s, t = _reviewkd()
    assert m.levels == ("pre1", "pre2", "pre3") and m.needs == {"pre1", "pre2", "pre3", "embedding"}
    # mid channels min(512, the student's pooled width); every ABF but the embedding's fuses
    assert [(a.reduce[0].in_channels, a.reduce[0].out_channels, a.out[0].out_channels, a.attention is not None)
            for a in m.abfs] == [(4, 10, 5, True), (6, 10, 7, True), (8, 10, 9, True), (10, 10, 12, False)]
    params = _abf_params(m)
    flat = [p for group in params for p in group]
    used = ["pre1", "pre2", "pre3", "embedding"]
    mine = {k: v.detach().clone().requires_grad_(True) for k, v in s.items()}
    leaves = _leaves(flat)
    it = iter(leaves)
    ref_params = [[next(it) for _ in group] for group in params]
    m.set_epoch(30)  # past the warm-up
    got = m(s, t, None, None)["reviewkd"]
    want = ref_reviewkd(mine, t, ref_params, ["pre1", "pre2", "pre3"], shapes=[1, 2, 4, 8], out_shapes=[1, 2, 8, 4],
                        weight=5.0, epoch_1based=31, warmup=20)
    _compare(got, [s[k] for k in used] + flat, want, [mine[k] for k in used] + leaves)


def test_reviewkd_warmup_is_mdistillers_with_its_one_based_epoch():
    m, s, t = _reviewkd({"stages": "stage1,stage3", "weight": 2.0})
    assert m.levels == ("pre1", "pre3")
    flat = [p for group in _abf_params(m) for p in group]
    full = m(s, t, None, None)["reviewkd"].item()  # before any set_epoch: no ramp
    for epoch in (0, 1, 9, 18, 19, 20, 30):  # the trainer's 0-based epoch; mdistiller's trainer counts from 1
        m.set_epoch(epoch)
        got = m(s, t, None, None)["reviewkd"]
        mdistiller_epoch = epoch + 1
        assert got.item() == pytest.approx(full * min(mdistiller_epoch / 20, 1.0), rel=1e-12)
    it = iter(_leaves(flat))
    ref_params = [[next(it) for _ in group] for group in _abf_params(m)]
    m.set_epoch(4)
    mine = {k: v.detach().clone().requires_grad_(True) for k, v in s.items()}
    want = ref_reviewkd(mine, t, ref_params, ["pre1", "pre3"], shapes=[1, 2, 8], out_shapes=[1, 2, 4],
                        weight=2.0, epoch_1based=5, warmup=20)
    _compare(m(s, t, None, None)["reviewkd"], [s["pre1"], s["pre3"], s["embedding"]], want,
             [mine["pre1"], mine["pre3"], mine["embedding"]])
    (off,) = parse_methods("reviewkd", {"reviewkd": {"warmup": 0}})
    off.set_epoch(0)
    assert off.warmup_factor() == 1.0


def test_reviewkd_stage_taps_and_pair_dependent_levels():
    (m,) = parse_methods("reviewkd")
    assert m.options() == {"weight": 5.0, "warmup": 20, "taps": "pre", "stages": ["stage1", "stage2", "stage3"],
                           "max_mid_channels": 512}
    assert m.ce_weight == 1.0 and parse_methods("hcl")[0].name == parse_methods("review")[0].name == "reviewkd"
    m.select_taps(PRE4, PRE4)
    assert m.needs == {"pre1", "pre2", "pre3", "pre4", "embedding"}
    (post,) = parse_methods("reviewkd", {"reviewkd": {"taps": "stage", "max_mid_channels": 3}})
    post.select_taps(PRE4, PRE3)
    assert post.needs == {"stage1", "stage2", "stage3", "embedding"}
    shapes = {f"stage{k}": v for k, v in ((1, (4, 8, 8)), (2, (6, 4, 4)), (3, (8, 2, 2)))}
    s = _maps(2, {**shapes, "embedding": (10,)}, grad=True)
    t = _maps(3, {**shapes, "embedding": (12,)})
    post.setup(s, t)
    post.double()
    assert {a.reduce[0].out_channels for a in post.abfs} == {3}
    (value,) = post(s, t, None, None).values()
    value.backward()
    assert all(s[k].grad is not None for k in post.needs) and all(v.grad is None for v in t.values())
    with pytest.raises(UserError, match="both models"):
        parse_methods("reviewkd")[0].select_taps({"pre1", "embedding"}, {"stage1", "embedding"})


# ---- KTA: torchdistill KTAAD (stage 1: paraphraser; stage 2: KTALoss x 50 + AffinityLoss x 1) --------------
def ref_paraphraser_stage1(p, z, l1_factor=1e-7):
    """Teacher4FactorTransfer with uses_decoder: MSE(paraphraser(z), z) + 1e-7 * ||encoder(z)||_1."""
    x = z
    for i in range(3):  # encoder: Conv2d + BN + LeakyReLU(0.1)
        x = F.leaky_relu(_bn_train(F.conv2d(x, p[4 * i], p[4 * i + 1], padding=1), p[4 * i + 2], p[4 * i + 3]), 0.1)
    code = x
    for i in range(3, 6):  # decoder: ConvTranspose2d + BN + LeakyReLU(0.1)
        x = F.conv_transpose2d(x, p[4 * i], p[4 * i + 1], padding=1)
        x = F.leaky_relu(_bn_train(x, p[4 * i + 2], p[4 * i + 3]), 0.1)
    return F.mse_loss(x, z) + l1_factor * code.norm(p=1)


def ref_encoder_eval(enc, z):
    x = z
    for i in range(3):
        conv, bn = enc[3 * i], enc[3 * i + 1]
        x = F.conv2d(x, conv.weight, conv.bias, padding=1)
        x = F.leaky_relu(_bn_eval(x, bn.weight, bn.bias, bn.running_mean, bn.running_var), 0.1)
    return x


def ref_kta(fa, kt, p=1):
    kt, fa = kt.flatten(1), fa.flatten(1)
    kt = kt / kt.norm(p=2, dim=1).unsqueeze(1)
    fa = fa / fa.norm(p=2, dim=1).unsqueeze(1)
    if p == 1:
        return F.l1_loss(fa, kt, reduction="mean")
    return torch.norm(fa - kt, p, dim=1).mean()


def ref_affinity(s, t):
    s, t = s.flatten(2), t.flatten(2)
    batch_size, ch_size, hw = s.shape
    s = s / s.norm(p=2, dim=2).unsqueeze(-1)
    t = t / t.norm(p=2, dim=2).unsqueeze(-1)
    total = torch.zeros(batch_size, dtype=s.dtype)
    for i in range(ch_size):
        diff = torch.bmm(s[:, i].unsqueeze(2), s[:, i].unsqueeze(1)) \
            - torch.bmm(t[:, i].unsqueeze(2), t[:, i].unsqueeze(1))
        total = total + (diff / hw).norm(p=2, dim=(1, 2))
    return total.mean()


def _pool(x, h, w):
    n, c, big_h, big_w = x.shape
    return x.reshape(n, c, h, big_h // h, w, big_w // w).mean(dim=(3, 5))


def _kta(opts=None, s_shape=(6, 4, 4), t_shape=(8, 4, 4)):
    s = _maps(4, {"stage2": (3, 8, 8), "stage3": s_shape}, grad=True)
    t = _maps(5, {"stage2": (3, 8, 8), "stage3": t_shape})
    (m,) = parse_methods("kta", {"kta": opts or {}})
    m.select_taps(PRE3, PRE4)
    m.setup(s, t)
    m.double()
    _randomise_bn(m)
    return m, s, t


def test_kta_stage_schedule_and_what_each_stage_trains():
    m, s, t = _kta({"stage1_epochs": 2})
    assert m.has_stages() and m.needs == {"stage3"}
    schedule = []
    for epoch in range(4):
        m.set_epoch(epoch)
        schedule.append((m.exclusive, m.trains_student, any(p.requires_grad for p in m.paraphraser.parameters()),
                         m.paraphraser.training))
    assert schedule == [(True, False, True, True)] * 2 + [(False, True, False, False)] * 2
    m.set_epoch(1)
    terms = m(s, t, None, None)
    assert set(terms) == {"kta.reconstruction", "kta.regularization"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.paraphraser.parameters())
    assert s["stage3"].grad is None and all(p.grad is None for p in m.feature_adapter.parameters())
    m.zero_grad(set_to_none=True)
    m.set_epoch(2)
    frozen = {k: v.clone() for k, v in m.paraphraser.state_dict().items()}
    terms = m(s, t, None, None)
    assert set(terms) == {"kta.adapt", "kta.affinity"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in m.paraphraser.parameters())
    assert all(torch.equal(v, m.paraphraser.state_dict()[k]) for k, v in frozen.items())  # BN statistics too
    assert s["stage3"].grad is not None and all(t_.grad is None for t_ in t.values())
    m.train()  # a module-wide train() keeps the frozen auto-encoder in eval mode
    assert not m.paraphraser.training


def test_kta_stage1_matches_torchdistill_paraphraser_training():
    m, s, t = _kta()
    m.set_epoch(0)
    m.train()
    params = [q for layer in (m.paraphraser.encoder, m.paraphraser.decoder) for i in range(3)
              for q in (layer[3 * i].weight, layer[3 * i].bias, layer[3 * i + 1].weight, layer[3 * i + 1].bias)]
    assert [q.shape[:2] for q in params[::4]] == [(8, 8), (4, 8), (4, 4), (4, 4), (4, 8), (8, 8)]  # k = 0.5
    got = sum(m(s, t, None, None).values())
    leaves = _leaves(params)
    keep = [i for i in range(len(params)) if i % 4 != 1]  # a conv bias before a training BN has zero gradient
    _compare(got, [params[i] for i in keep], ref_paraphraser_stage1(leaves, t["stage3"]), [leaves[i] for i in keep])


@pytest.mark.parametrize("s_shape, opts", [((6, 4, 4), {}), ((6, 8, 8), {"p": 2, "weight": 3.0})])
def test_kta_stage2_matches_torchdistill_kta_and_affinity(s_shape, opts):
    m, s, t = _kta(opts, s_shape=s_shape)
    m.set_epoch(1)
    fa, aa = m.feature_adapter, m.affinity_adapter
    params = [fa[0].weight, fa[0].bias, fa[1].weight, fa[1].bias, aa.weight, aa.bias]
    got = sum(m(s, t, None, None).values())
    x = s["stage3"].detach().clone().requires_grad_(True)
    leaves = _leaves(params)
    code = ref_encoder_eval(m.paraphraser.encoder, t["stage3"])
    adapted = torch.relu(_bn_train(F.conv2d(x, leaves[0], leaves[1], padding=1), leaves[2], leaves[3]))
    related = F.conv2d(x, leaves[4], leaves[5], padding=1)
    adapted, related = _pool(adapted, 4, 4), _pool(related, 4, 4)  # the student's larger map, pooled (adaptation)
    want = opts.get("weight", 50.0) * ref_kta(adapted, code, opts.get("p", 1)) + 1.0 * ref_affinity(related, code)
    keep = [0, 2, 3, 4, 5]  # the feature adapter's conv bias, before a training BN, has zero gradient
    _compare(got, [s["stage3"]] + [params[i] for i in keep], want, [x] + [leaves[i] for i in keep])


def test_kta_state_is_in_the_state_dict():
    m, s, t = _kta()
    m.set_epoch(3)
    want = m(s, t, None, None)
    (other,) = parse_methods("kta")
    other.select_taps(PRE3, PRE4)
    other.setup(s, t)
    other.double().load_state_dict(m.state_dict())
    other.set_epoch(3)  # the trainer calls it on resume too
    got = other(s, t, None, None)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(k.startswith("paraphraser.encoder") and k.endswith("running_mean") for k in m.state_dict())


def test_kta_defaults_aliases_and_option_errors():
    (m,) = parse_methods("affinity")
    assert m.name == "kta" and parse_methods("ktaad")[0].name == "kta" and m.ce_weight == 1.0
    assert m.options() == {"weight": 50.0, "affinity_weight": 1.0, "rate": 0.5, "l1_weight": 1e-7,
                           "stage1_epochs": 1, "p": 1.0, "q": 2.0, "stage": "stage3"}
    m.select_taps(PRE4, PRE4)
    assert m.needs == {"stage4"}
    with pytest.raises(UserError, match="both models"):
        m.select_taps({"embedding"}, PRE4)
    with pytest.raises(UserError, match="N x C x H x W"):
        parse_methods("kta")[0].setup({"stage3": torch.zeros(2, 8)}, {"stage3": torch.zeros(2, 8)})
    with pytest.raises(UserError, match="no channel"):
        parse_methods("kta", {"kta": {"rate": 0.1}})[0].setup({"stage3": torch.zeros(2, 4, 2, 2)},
                                                              {"stage3": torch.zeros(2, 5, 2, 2)})


@pytest.mark.parametrize("name, opts, match", [
    ("kta", {"stage1_epochs": 0}, "stage1_epochs must be >= 1"),
    ("kta", {"rate": 1.5}, r"rate must be in \(0, 1\]"),
    ("kta", {"q": 0}, "q must be > 0"),
    ("kta", {"p": -1}, "> 0"),
    ("kta", {"stage": "embedding"}, "auto or one of"),
    ("kta", {"affinity_weight": -1}, "loss weight"),
    ("kta", {"l1_weight": -1}, "loss weight"),
    ("reviewkd", {"warmup": -1}, "warmup must be >= 0"),
    ("reviewkd", {"taps": "post"}, "pre, stage"),
    ("reviewkd", {"stages": "stage5"}, "stage taps"),
    ("reviewkd", {"max_mid_channels": 0}, "max_mid_channels must be >= 1"),
    ("reviewkd", {"weight": -1.0}, "loss weight"),
])
def test_bad_options_are_one_line_user_errors(name, opts, match):
    with pytest.raises(UserError, match=match) as err:
        parse_methods(name, {name: opts})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, epoch", [("reviewkd", 0), ("kta", 0), ("kta", 1)])
def test_half_inputs_give_float32_terms_and_no_teacher_grad(name, epoch):
    shapes = {"pre1": (4, 8, 8), "pre2": (6, 4, 4), "pre3": (8, 4, 4), "stage3": (8, 4, 4), "embedding": (10,)}
    s32, t32 = _maps(12, shapes), _maps(13, shapes)
    s = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in s32.items()}
    t = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in t32.items()}
    (m,) = parse_methods(name)
    m.setup(s, t)
    m.set_epoch(epoch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's --amp for methods with adapters
        terms = m(s, t, None, None)
    assert terms and all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(v.grad is None for v in t.values())
    if not m.exclusive:
        assert all(s[k].grad is not None for k in m.needs)
