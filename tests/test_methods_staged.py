"""ft and ab, the staged methods, against float64 transcriptions of their reference code written out here in plain
torch (torchdistill FTLoss with Paraphraser4FactorTransfer / Translator4FactorTransfer and the rrpr2020 FT config;
the AB authors' criterion_alternative_L2 with their stage weights and batch / 1000 * 3 normalisation): loss and
gradients w.r.t. the student's signals and the adapters within 1e-9 relative; the stage schedules, defaults,
option errors and half-precision inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError
from fastkd.methods import parse_methods
from fastkd.methods.ab import AB, alt_act_transfer
from fastkd.methods.ft import FT

REL = 1e-9
N = 5


def _maps(seed, shapes, grad=False):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(N, *s, generator=g, dtype=torch.float64).requires_grad_(grad) for k, s in shapes.items()}


def _pool(x, h, w):
    """Block average of the trailing H x W to h x w (H, W multiples): adaptive pooling's value."""
    n, c, big_h, big_w = x.shape
    return x.reshape(n, c, h, big_h // h, w, big_w // w).mean(dim=(3, 5))


def _close(a, b):
    assert torch.allclose(a, b, rtol=REL, atol=REL * float(b.abs().max()) + 1e-300), (a, b)


def _check(terms, name, student, used, reference, params):
    """``terms[name]`` and its gradients (``used`` student signals, then ``params``) against ``reference(copies)``,
    the copies of the student signals carrying their own gradients."""
    got = terms[name]
    assert got.dtype == torch.float64
    grads = torch.autograd.grad(got, [student[k] for k in used] + list(params))
    copies = {k: student[k].detach().clone().requires_grad_(True) for k in used}
    want = reference(copies)
    want_grads = torch.autograd.grad(want, [copies[k] for k in used] + list(params))
    _close(got.detach(), want.detach())
    for g, w in zip(grads, want_grads):
        _close(g, w)


# ---- ft ----------------------------------------------------------------------------------------------------
def _ref_bn(x, bn, training):
    """BatchNorm2d: the batch's mean and biased variance in training mode, the running statistics otherwise."""
    if training:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    else:
        mean, var = bn.running_mean.view(1, -1, 1, 1), bn.running_var.view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def _ref_convs(x, seq, training, transposed=False):
    """The reference's make_enc_modules / make_dec_modules: three (transposed) 3x3 convolutions, stride 1, padding
    1, each followed by BatchNorm (uses_bn) and LeakyReLU(0.1); the weights are the module's."""
    convs = [m for m in seq if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    bns = [m for m in seq if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 3 and len(bns) in (0, 3)
    for i, conv in enumerate(convs):
        x = (F.conv_transpose2d if transposed else F.conv2d)(x, conv.weight, conv.bias, stride=1, padding=1)
        if bns:
            x = _ref_bn(x, bns[i], training)
        x = torch.where(x >= 0, x, 0.1 * x)
    return x


def _perturb_bns(module, seed):
    """BN parameters and running statistics away from their initial 1 / 0, so a transcription must apply them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            for t, lo, spread in ((bn.weight, 0.5, 1.0), (bn.running_var, 0.5, 1.0)):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * spread + lo)
            for t in (bn.bias, bn.running_mean):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.3)


def _ref_ft_loss(s_factor, t_factor, p, reduction):
    """torchdistill FTLoss.forward: flatten(1), divide by the row's L2 norm; p == 1: l1_loss; else the rows' p-norm."""
    s, t = s_factor.flatten(1), t_factor.flatten(1)
    s = s / s.norm(dim=1).unsqueeze(1)
    t = t / t.norm(dim=1).unsqueeze(1)
    if p == 1:
        d = (s - t).abs()
        return d.mean() if reduction == "mean" else d.sum()
    d = ((s - t).abs() ** p).sum(dim=1) ** (1.0 / p)
    return d.mean() if reduction == "mean" else d.sum()


def _ft(student_shape, teacher_shape, **opts):
    student = _maps(0, {"stage3": student_shape}, grad=True)
    teacher = _maps(1, {"stage3": teacher_shape})
    m = FT(**opts)
    m.setup(student, teacher)
    m.double()
    _perturb_bns(m, 5)
    return m, student, teacher


def test_ft_defaults_options_and_auto_stage():
    m = FT()
    assert m.options() == {"weight": 1000.0, "p": 1.0, "reduction": "mean", "rate": 0.5, "paraphraser_epochs": 1,
                           "stage": "stage3", "batch_norm": True}
    assert m.needs == {"stage3"} and m.ce_weight == 1.0 and m.cacheable and m.has_stages()
    m.select_taps({"stage1", "stage2", "stage3", "stage4"}, {"stage1", "stage2", "stage3", "stage4", "pre4"})
    assert m.needs == {"stage4"}
    m.select_taps({"stage1", "stage2", "stage3"}, {"stage1", "stage2", "stage3", "stage4"})
    assert m.needs == {"stage3"}
    assert FT(stage="stage2").needs == {"stage2"}
    (alias,) = parse_methods("factor_transfer", {"ft": {"batch_norm": False}})
    assert isinstance(alias, FT) and not alias.batch_norm


@pytest.mark.parametrize("opts", [{"reduction": "none"}, {"p": 0}, {"rate": 0.0}, {"paraphraser_epochs": 0},
                                  {"stage": "stage9"}, {"stage": "pre3"}, {"batch_norm": "yes"}])
def test_ft_bad_options(opts):
    with pytest.raises(UserError, match=f"ft.{next(iter(opts))}"):
        FT(**opts)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_ft_modules_have_the_reference_layers(batch_norm):
    m, _, _ = _ft((6, 4, 4), (9, 4, 4), batch_norm=batch_norm)  # k = int(9 * 0.5) = 4 factor channels

    def layers(seq):
        out = []
        for x in seq:
            if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d)):
                out.append((type(x).__name__, x.in_channels, x.out_channels, x.kernel_size, x.stride, x.padding))
            else:
                out.append((type(x).__name__, getattr(x, "negative_slope", getattr(x, "num_features", None))))
        return out

    def ref(kind, widths):  # the reference's conv [+ BatchNorm2d] + LeakyReLU(0.1) per layer
        out = []
        for i, o in zip(widths, widths[1:]):
            out += [(kind, i, o, (3, 3), (1, 1), (1, 1))] + [("BatchNorm2d", o)] * batch_norm + [("LeakyReLU", 0.1)]
        return out

    assert layers(m.paraphraser.encoder) == ref("Conv2d", [9, 9, 4, 4])
    assert layers(m.paraphraser.decoder) == ref("ConvTranspose2d", [4, 4, 9, 9])
    assert layers(m.translator) == ref("Conv2d", [6, 6, 4, 4])
    convs = [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all((x.bias is None) == batch_norm for x in convs)  # the authors': no bias before a BatchNorm
    with pytest.raises(UserError, match="factor channel"):
        FT(rate=0.1).setup({"stage3": torch.zeros(2, 4, 2, 2)}, {"stage3": torch.zeros(2, 9, 2, 2)})


def test_ft_stage_schedule_freezes_one_module_per_stage():
    m, student, teacher = _ft((6, 4, 4), (8, 4, 4), paraphraser_epochs=2)
    assert not m.exclusive and m.trains_student  # before any set_epoch: stage 2
    assert set(m(student, teacher, None)) == {"ft"}
    for epoch in (0, 1):
        m.set_epoch(epoch)
        m.train()
        assert m.exclusive and not m.trains_student
        assert all(p.requires_grad for p in m.paraphraser.parameters()) and m.paraphraser.training
        assert not any(p.requires_grad for p in m.translator.parameters())
        stats = [b.clone() for b in m.paraphraser.buffers()]
        assert set(m(student, teacher, None)) == {"ft.reconstruction"}
        assert not all(torch.equal(a, b) for a, b in zip(stats, m.paraphraser.buffers()))  # BN statistics move
    for epoch in (2, 7):
        m.set_epoch(epoch)
        m.train()  # the trainer's train() leaves the frozen paraphraser in eval mode
        assert not m.exclusive and m.trains_student
        assert not any(p.requires_grad for p in m.paraphraser.parameters()) and not m.paraphraser.training
        assert all(p.requires_grad for p in m.translator.parameters()) and m.translator.training
        stats = [b.clone() for b in m.paraphraser.buffers()]
        terms = m(student, teacher, None)
        assert set(terms) == {"ft"}
        assert all(torch.equal(a, b) for a, b in zip(stats, m.paraphraser.buffers()))  # frozen: no BN update
        terms["ft"].backward()
        assert all(p.grad is None for p in m.paraphraser.parameters())
        assert all(p.grad is not None for p in m.translator.parameters()) and student["stage3"].grad is not None


@pytest.mark.parametrize("batch_norm", [False, True])
def test_ft_reconstruction_loss_matches_reference_mse(batch_norm):
    m, student, teacher = _ft((6, 4, 4), (8, 4, 4), batch_norm=batch_norm)
    m.set_epoch(0)
    params = list(m.paraphraser.parameters())
    got = m(student, teacher, None)["ft.reconstruction"]
    x = teacher["stage3"]
    rec = _ref_convs(_ref_convs(x, m.paraphraser.encoder, True), m.paraphraser.decoder, True, transposed=True)
    want = ((rec - x) ** 2).mean()  # MSELoss(reduction='mean'), factor 1
    assert got.dtype == torch.float64
    _close(got.detach(), want.detach())
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        _close(g, w)


@pytest.mark.parametrize("p,reduction,batch_norm", [(1.0, "mean", True), (1.0, "mean", False), (1.0, "sum", True),
                                                    (2.0, "mean", True), (2.0, "sum", False), (3.0, "mean", True)])
def test_ft_loss_matches_reference_ftloss(p, reduction, batch_norm):
    m, student, teacher = _ft((6, 4, 4), (8, 4, 4), p=p, reduction=reduction, weight=7.0, batch_norm=batch_norm)
    m.set_epoch(1)

    def reference(s):  # the frozen paraphraser's BN on its running statistics, the translator's on the batch's
        t_factor = _ref_convs(teacher["stage3"], m.paraphraser.encoder, False)
        s_factor = _ref_convs(s["stage3"], m.translator, True)
        return 7.0 * _ref_ft_loss(s_factor, t_factor, p, reduction)

    _check(m(student, teacher, None), "ft", student, ["stage3"], reference, list(m.translator.parameters()))


def test_ft_pools_the_larger_factor():
    m, student, teacher = _ft((5, 8, 8), (8, 4, 4))
    m.set_epoch(3)

    def reference(s):
        t_factor = _ref_convs(teacher["stage3"], m.paraphraser.encoder, False)
        s_factor = _pool(_ref_convs(s["stage3"], m.translator, True), 4, 4)
        return 1000.0 * _ref_ft_loss(s_factor, t_factor, 1, "mean")

    _check(m(student, teacher, None), "ft", student, ["stage3"], reference, list(m.translator.parameters()))


@pytest.mark.parametrize("epoch", [0, 1])
def test_ft_half_precision_inputs_give_float32_losses(epoch):
    m = FT()
    s, t = {"stage3": torch.randn(4, 6, 4, 4).half()}, {"stage3": torch.randn(4, 8, 4, 4).half()}
    m.setup(s, t)
    m.set_epoch(epoch)
    (value,) = m(s, t, None).values()
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ---- ab ----------------------------------------------------------------------------------------------------
def _ref_connector(x, connector):
    """conv1x1 (no bias) + BatchNorm2d in training mode."""
    conv, bn = connector
    return _ref_bn(torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x), bn, True)


def _ref_alternative_l2(source, target, margin):
    """The authors' criterion_alternative_L2."""
    loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).double()
            + (source - margin) ** 2 * ((source <= margin) & (target > 0)).double())
    return torch.abs(loss).sum()


def _ab(s_shapes, t_shapes, **opts):
    student, teacher = _maps(2, s_shapes, grad=True), _maps(3, t_shapes)
    m = AB(**opts)
    m.select_taps(set(student), set(teacher))
    m.setup(student, teacher)
    m.double()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # BN affine parameters away from 1 / 0, so the transcription must apply them
        for c in m.connectors:
            c[1].weight.copy_(torch.rand(c[1].weight.shape, generator=g, dtype=torch.float64) + 0.5)
            c[1].bias.copy_(torch.randn(c[1].bias.shape, generator=g, dtype=torch.float64) * 0.3)
    return m, student, teacher


def test_ab_defaults_options_and_auto_stages():
    m = AB()
    assert m.options() == {"weight": 3.0, "scale": 1e-3, "margin": 1.0, "init_epochs": 1,
                           "stages": ["pre1", "pre2", "pre3"]}
    assert m.needs == {"pre1", "pre2", "pre3"} and m.ce_weight == 1.0 and m.cacheable and m.has_stages()
    taps4 = {"stage1", "stage4", "pre1", "pre2", "pre3", "pre4", "pre4_stats"}
    m.select_taps(taps4, taps4)
    assert m.needs == {"pre1", "pre2", "pre3", "pre4"}
    assert AB(stages="1,3").needs == {"pre1", "pre3"}
    for alias in ("alt_act_transfer", "abkd"):
        (method,) = parse_methods(alias)
        assert isinstance(method, AB)


@pytest.mark.parametrize("opts", [{"margin": -1.0}, {"init_epochs": -1}, {"stages": "pre9"}])
def test_ab_bad_options(opts):
    with pytest.raises(UserError, match=f"ab.{next(iter(opts))}"):
        AB(**opts)


@pytest.mark.parametrize("depth", [3, 4])
def test_ab_loss_matches_the_authors_code(depth):
    shapes_s = {"pre1": (4, 8, 8), "pre2": (6, 4, 4), "pre3": (8, 2, 2), "pre4": (8, 1, 1)}
    shapes_t = {"pre1": (6, 8, 8), "pre2": (10, 4, 4), "pre3": (12, 2, 2), "pre4": (16, 1, 1)}
    names = [f"pre{k}" for k in range(1, depth + 1)]
    m, student, teacher = _ab({k: shapes_s[k] for k in names}, {k: shapes_t[k] for k in names})
    m.set_epoch(0)

    def reference(s):  # CIFAR: l3 + l2 / 2 + l1 / 4, each / batch; then / 1000 * 3 (four positions: 1/8 .. 1)
        total = 0.0
        for i, (name, connector) in enumerate(zip(names, m.connectors)):
            loss = _ref_alternative_l2(_ref_connector(s[name], connector), teacher[name], 1.0)
            total = total + loss / N / 2 ** (depth - 1 - i)
        return total / 1000 * 3

    params = [p for c in m.connectors for p in c.parameters()]
    _check(m(student, teacher, None), "ab", student, names, reference, params)


def test_ab_hinge_boundaries():
    """At the edges of the masks (a teacher response of exactly 0 is inactive; a student response of exactly
    +-margin), element by element."""
    s = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=torch.float64).repeat(3)
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).repeat_interleave(7)
    for i in range(len(s)):
        one = lambda x: x[i:i + 1].view(1, 1, 1, 1)
        assert alt_act_transfer(one(s), one(t), 1.0).item() == _ref_alternative_l2(one(s), one(t), 1.0).item()


def test_ab_margin_weight_and_spatial_pooling():
    m, student, teacher = _ab({"pre1": (4, 8, 8), "pre2": (6, 2, 2)}, {"pre1": (5, 4, 4), "pre2": (7, 4, 4)},
                              margin=0.5, weight=2.0, scale=0.1, init_epochs=0)
    m.set_epoch(5)

    def reference(s):  # the larger map of a pair is pooled to the smaller's H x W
        l1 = _ref_alternative_l2(_pool(_ref_connector(s["pre1"], m.connectors[0]), 4, 4), teacher["pre1"], 0.5)
        l2 = _ref_alternative_l2(_ref_connector(s["pre2"], m.connectors[1]), _pool(teacher["pre2"], 2, 2), 0.5)
        return 2.0 * 0.1 * (l1 / 2 + l2) / N

    params = [p for c in m.connectors for p in c.parameters()]
    _check(m(student, teacher, None), "ab", student, ["pre1", "pre2"], reference, params)


def test_ab_initialisation_stage_schedule():
    m, student, teacher = _ab({"pre1": (4, 4, 4)}, {"pre1": (6, 4, 4)}, init_epochs=2)
    assert not m.exclusive and set(m(student, teacher, None)) == {"ab"}  # before any set_epoch: the loss
    for epoch in (0, 1):
        m.set_epoch(epoch)
        assert m.exclusive and m.trains_student
        assert all(p.requires_grad for p in m.connectors.parameters())
        assert set(m(student, teacher, None)) == {"ab"}
    for epoch in (2, 9):
        m.set_epoch(epoch)
        assert not m.exclusive and m(student, teacher, None) == {}  # then CE alone (the trainer's)
        assert not any(p.requires_grad for p in m.connectors.parameters())
    one_stage = AB(init_epochs=0)
    assert not one_stage.has_stages()
    one_stage.setup({"pre1": torch.zeros(2, 3, 2, 2), "pre2": torch.zeros(2, 3, 2, 2), "pre3": torch.zeros(2, 3, 2, 2)},
                    {"pre1": torch.zeros(2, 4, 2, 2), "pre2": torch.zeros(2, 4, 2, 2), "pre3": torch.zeros(2, 4, 2, 2)})
    for epoch in (0, 50):
        one_stage.set_epoch(epoch)
        assert not one_stage.exclusive and all(p.requires_grad for p in one_stage.parameters())


def test_ab_half_precision_inputs_give_float32_losses():
    m = AB(stages="pre1,pre2")
    s = {"pre1": torch.randn(4, 3, 4, 4).half(), "pre2": torch.randn(4, 5, 2, 2).half()}
    t = {"pre1": torch.randn(4, 6, 4, 4).half(), "pre2": torch.randn(4, 7, 2, 2).half()}
    m.setup(s, t)
    m.set_epoch(0)
    value = m(s, t, None)["ab"]
    assert value.dtype == torch.float32 and torch.isfinite(value) and value > 0
