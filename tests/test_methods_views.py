"""sskd and mlkd, the methods that run both networks on copies of the batch (``Method.expand``), against float64
transcriptions of their reference code written out here in plain torch (the SSKD authors' ``student.py`` and
torchdistill's ``AuxSSKDLoss``/``SSKDLoss``; MLKD's ``KD_ours.forward_train``): loss and gradient w.r.t. the
student's signals and the trained head within 1e-9 relative; their copies of the batch (shape, the batch first,
determinism per seed and step, the step counter's resume through the state dict), SSKD's stages, defaults,
half-precision inputs and option errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastkd.errors import UserError
from fastkd.methods import parse_methods
from fastkd.methods.mlkd import MLKD
from fastkd.methods.sskd import SSKD

REL = 1e-9
B, CLASSES = 6, 7


def _randn(seed, *shape, grad=False, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(grad)


def _close(got, want, what):
    assert abs(got.item() - want.item()) <= REL * abs(want.item()), (what, got.item(), want.item())


def _check(got_terms, reference, inputs, params=()):
    """The method's terms (each, and their sum's gradient w.r.t. ``inputs`` and ``params``) against
    ``reference(inputs copies, params copies) -> {term: value}``."""
    assert all(v.dtype == torch.float64 for v in got_terms.values())
    got = sum(got_terms.values())
    got_grads = torch.autograd.grad(got, list(inputs) + list(params))
    mine = [x.detach().clone().requires_grad_(True) for x in inputs]
    mine_params = [p.detach().clone().requires_grad_(True) for p in params]
    want_terms = reference(mine, mine_params)
    assert want_terms.keys() == got_terms.keys()
    for k in want_terms:
        _close(got_terms[k], want_terms[k], k)
    want = sum(want_terms.values())
    assert want.item() > 0
    for g, w in zip(got_grads, torch.autograd.grad(want, mine + mine_params)):
        assert w.norm() > 0 and (g - w).norm() <= REL * w.norm(), ((g - w).norm().item(), w.norm().item())


# ---- SSKD: the authors' student.py (teacher stage and student loss) / torchdistill SSKDLoss, AuxSSKDLoss --------
def _sample_major(x):
    """fastkd's view-major rows [x; rot90; rot180; rot270] -> the reference's row 4 i + k = rotation k of image i."""
    return x.reshape(4, -1, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])


def _proj_head(x, w1, b1, w2, b2):
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


def _simi(feat, batch, nor_index, aug_index):
    nor = feat[nor_index].unsqueeze(2).expand(-1, -1, 3 * batch).transpose(0, 2)
    aug = feat[aug_index].unsqueeze(2).expand(-1, -1, 1 * batch)
    return F.cosine_similarity(aug, nor, dim=1)


def _distill_index(scores, aug_target, ratio, batch):
    rank = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.argmax(torch.eq(rank, aug_target.unsqueeze(1)).long(), dim=1)  # groundtruth label's rank
    index = torch.argsort(rank, stable=True)  # stable: ties in the sample-major row order
    wrong_num = torch.nonzero(rank, as_tuple=True)[0].numel()
    correct_num = 3 * batch - wrong_num
    index = index[:correct_num + int(wrong_num * ratio)]
    return torch.sort(index)[0]


def ref_sskd(output, s_emb, knowledge, t_emb, target, head_s, head_t, a):
    output, s_emb, knowledge, t_emb = (_sample_major(v) for v in (output, s_emb, knowledge, t_emb))
    batch = target.shape[0]
    nor_index, aug_index = torch.arange(4 * batch) % 4 == 0, torch.arange(4 * batch) % 4 != 0
    s_feat, t_feat = _proj_head(s_emb, *head_s), _proj_head(t_emb, *head_t)
    log_nor_output = F.log_softmax(output[nor_index] / a["kd_T"], dim=1)
    log_aug_output = F.log_softmax(output[aug_index] / a["tf_T"], dim=1)
    nor_knowledge = F.softmax(knowledge[nor_index] / a["kd_T"], dim=1)
    aug_knowledge = F.softmax(knowledge[aug_index] / a["tf_T"], dim=1)
    aug_target = target.unsqueeze(1).expand(-1, 3).contiguous().view(-1)
    distill_index_tf = _distill_index(aug_knowledge, aug_target, a["ratio_tf"], batch)
    s_simi = _simi(s_feat, batch, nor_index, aug_index)
    t_simi = _simi(t_feat, batch, nor_index, aug_index).detach()
    aug_target = torch.arange(batch).unsqueeze(1).expand(-1, 3).contiguous().view(-1)
    distill_index_ss = _distill_index(t_simi, aug_target, a["ratio_ss"], batch)
    a["kept"] = (len(distill_index_tf), len(distill_index_ss))
    log_simi = F.log_softmax(s_simi / a["ss_T"], dim=1)
    simi_knowledge = F.softmax(t_simi / a["ss_T"], dim=1)
    loss2 = F.kl_div(log_nor_output, nor_knowledge, reduction="batchmean") * a["kd_T"] ** 2
    loss3 = F.kl_div(log_aug_output[distill_index_tf], aug_knowledge[distill_index_tf], reduction="batchmean") \
        * a["tf_T"] ** 2
    loss4 = F.kl_div(log_simi[distill_index_ss], simi_knowledge[distill_index_ss], reduction="batchmean") \
        * a["ss_T"] ** 2
    return {"sskd.kd": a["kd_weight"] * loss2, "sskd.tf": a["tf_weight"] * loss3, "sskd.ss": a["ss_weight"] * loss4}


def ref_sskd_teacher_stage(t_emb, head_t, batch):
    rep = _proj_head(_sample_major(t_emb), *head_t)
    nor_index, aug_index = torch.arange(4 * batch) % 4 == 0, torch.arange(4 * batch) % 4 != 0
    simi = _simi(rep, batch, nor_index, aug_index)
    target = torch.arange(batch).unsqueeze(1).expand(-1, 3).contiguous().view(-1).long()
    return F.cross_entropy(simi, target)


def _sskd_signals(seed, d_s=10, d_t=12, scale=3.0):
    student = {"logits": _randn(seed, 4 * B, CLASSES, grad=True, scale=scale),
               "embedding": _randn(seed + 1, 4 * B, d_s, grad=True)}
    teacher = {"logits": _randn(seed + 2, 4 * B, CLASSES, scale=scale), "embedding": _randn(seed + 3, 4 * B, d_t)}
    return student, teacher


def _head(module):
    return [module[0].weight, module[0].bias, module[2].weight, module[2].bias]


@pytest.mark.parametrize("options", [{}, {"tf_ratio": 0.5, "ss_ratio": 0.25, "temperature": 2.0,
                                          "ss_temperature": 0.3}])
def test_sskd_matches_the_reference_student_loss(options):
    student, teacher = _sskd_signals(0)
    labels = torch.tensor([1, 4, 0, 6, 1, 3])
    (m,) = parse_methods("sskd", {"sskd": options})
    m.setup(student, teacher)
    m.double()
    m.set_epoch(60)  # the first epoch after the teacher-head stage (ss_epochs 60)
    assert not m.exclusive and m.trains_student and not any(p.requires_grad for p in m.head_t.parameters())
    o = m.options()
    a = {"kd_T": o["temperature"], "tf_T": o["tf_temperature"], "ss_T": o["ss_temperature"], "ratio_tf": o["tf_ratio"],
         "ratio_ss": o["ss_ratio"], "kd_weight": 0.9, "tf_weight": 2.7, "ss_weight": 10.0}
    head_t = [p.detach() for p in _head(m.head_t)]
    _check(m(student, teacher, labels),
           lambda x, p: ref_sskd(x[0], x[1], teacher["logits"], teacher["embedding"], labels, p, head_t, a),
           [student["logits"], student["embedding"]], _head(m.head_s))
    tf_kept, ss_kept = a["kept"]
    assert 0 < ss_kept < 3 * B  # the error-level ranking dropped some views and kept others
    if options:
        assert 0 < tf_kept < 3 * B


def test_sskd_teacher_head_stage_matches_the_reference_and_trains_only_the_head():
    student, teacher = _sskd_signals(10)
    (m,) = parse_methods("sskd", {"sskd": {"ss_epochs": 2}})
    m.setup(student, teacher)
    m.double()
    assert m.has_stages() and not m.exclusive and not m.head_t[0].weight.requires_grad  # main stage until told
    for epoch, stage1 in ((0, True), (1, True), (2, False), (9, False), (1, True)):
        m.set_epoch(epoch)
        assert (m.exclusive, m.trains_student, m.head_t[0].weight.requires_grad) == (stage1, not stage1, stage1)
    terms = m(student, teacher, torch.arange(B))
    assert list(terms) == ["sskd.aux"]
    _check(terms, lambda x, p: {"sskd.aux": ref_sskd_teacher_stage(teacher["embedding"], p, B)}, [], _head(m.head_t))
    assert not SSKD(ss_epochs=0).has_stages()
    m0 = SSKD(ss_epochs=0)
    m0.set_epoch(0)
    assert not m0.exclusive and m0.trains_student


def test_sskd_expand_is_the_batch_and_its_three_rotations():
    m = SSKD()
    x = torch.randn(3, 2, 5, 5)
    out = m.expand(x)
    assert out.shape == (12, 2, 5, 5) and torch.equal(out[:3], x) and torch.equal(m.expand(x), out)
    i, j = 1, 4
    for k in range(1, 4):  # counter-clockwise: np.rot90 of each H x W plane, as the reference's dataset
        assert torch.equal(out[3 * k:3 * k + 3], torch.from_numpy(np.rot90(x.numpy(), k, axes=(2, 3)).copy()))
    assert torch.equal(out[3:6, :, x.shape[-1] - 1 - j, i], x[:, :, i, j])  # rot90: (i, j) -> (W-1-j, i)
    with pytest.raises(UserError, match="square"):
        m.expand(torch.zeros(2, 3, 4, 6))
    student, teacher = _sskd_signals(20)
    m.setup(student, teacher)
    with pytest.raises(RuntimeError, match="24 rows"):
        m({k: v[:B] for k, v in student.items()}, {k: v[:B] for k, v in teacher.items()}, torch.arange(B))


# ---- MLKD: KD_ours.forward_train (mdistiller/distillers/KD_ours.py) at CFG.KD's CIFAR-100 defaults ---------------
def ref_kd_loss(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def ref_cc_loss(logits_student, logits_teacher, temperature):
    class_num = logits_teacher.shape[1]
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student.transpose(1, 0), pred_student)
    teacher_matrix = torch.mm(pred_teacher.transpose(1, 0), pred_teacher)
    return ((teacher_matrix - student_matrix) ** 2).sum() / class_num


def ref_bc_loss(logits_student, logits_teacher, temperature):
    batch_size = logits_teacher.shape[0]
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student, pred_student.transpose(1, 0))
    teacher_matrix = torch.mm(pred_teacher, pred_teacher.transpose(1, 0))
    return ((teacher_matrix - student_matrix) ** 2).sum() / batch_size


def ref_mlkd(s_weak, s_strong, t_weak, t_strong, target, T, ce_w, kd_w):
    pred_teacher_weak = F.softmax(t_weak.detach(), dim=1)
    confidence, _ = pred_teacher_weak.max(dim=1)
    conf_thresh = np.percentile(confidence.numpy().flatten(), 50)
    mask = confidence.le(conf_thresh).bool()
    class_confidence = torch.sum(pred_teacher_weak, dim=0)
    class_confidence_thresh = np.percentile(class_confidence.numpy().flatten(), 50)
    class_conf_mask = class_confidence.le(class_confidence_thresh).bool()
    loss_ce = ce_w * (F.cross_entropy(s_weak, target) + F.cross_entropy(s_strong, target))
    temps = (T, 3.0, 5.0, 2.0, 6.0)
    loss_kd_weak = sum(kd_w * ((ref_kd_loss(s_weak, t_weak, t) * mask).mean()) for t in temps)
    loss_kd_strong = kd_w * ref_kd_loss(s_strong, t_strong, T) + kd_w * ref_kd_loss(s_strong, t_strong, 3.0) \
        + kd_w * ref_kd_loss(s_strong, t_strong, 5.0) + kd_w * ref_kd_loss(s_weak, t_weak, 2.0) \
        + kd_w * ref_kd_loss(s_weak, t_weak, 6.0)
    loss_cc_weak = sum(kd_w * ((ref_cc_loss(s_weak, t_weak, t) * class_conf_mask).mean()) for t in temps)
    loss_bc_weak = sum(kd_w * ((ref_bc_loss(s_weak, t_weak, t) * mask).mean()) for t in temps)
    return {"loss_ce": loss_ce, "loss_kd": loss_kd_weak + loss_kd_strong, "loss_cc": loss_cc_weak,
            "loss_bc": loss_bc_weak}


@pytest.mark.parametrize("options", [{}, {"temperature": 1.0, "weight": 0.5, "strong_ce_weight": 0.5}])
@pytest.mark.parametrize("batch", [6, 5])  # an even batch (mask mean 1/2) and an odd one (the median itself kept)
def test_mlkd_matches_the_reference_loss(options, batch):
    z_s = _randn(1, 2 * batch, CLASSES, grad=True, scale=3.0)
    z_t = _randn(2, 2 * batch, CLASSES, scale=3.0)
    labels = torch.tensor([1, 4, 0, 6, 1, 3][:batch])
    (m,) = parse_methods("mlkd", {"mlkd": options})
    o, ce_w = m.options(), m.strong_ce_weight  # the trainer's CE on the weak views takes the same weight here

    def reference(x, _):
        r = ref_mlkd(x[0][:batch], x[0][batch:], z_t[:batch], z_t[batch:], labels, o["temperature"], ce_w, o["weight"])
        weak_ce = ce_w * F.cross_entropy(x[0][:batch], labels)  # the trainer's term, not the method's
        return {"mlkd.ce_strong": r["loss_ce"] - weak_ce, "mlkd.instance": r["loss_kd"], "mlkd.class": r["loss_cc"],
                "mlkd.batch": r["loss_bc"]}

    _check(m({"logits": z_s}, {"logits": z_t}, labels), reference, [z_s])


def test_mlkd_expand_is_the_batch_then_seeded_strong_views_resumed_by_the_state_dict():
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)  # the run's seed, captured in setup
    a, b = MLKD(), MLKD()
    for m in (a, b):
        m.setup({}, {})
    first = a.expand(x)
    assert first.shape == (10, 3, 16, 16) and torch.equal(first[:5], x) and a.step == 1
    assert not torch.equal(first[5:], x) and (first[5:] == 0).any()  # transformed, with exposed/cut-out pixels
    assert torch.equal(b.expand(x), first)  # same seed, same step: the same views
    second = a.expand(x)
    assert not torch.equal(second[5:], first[5:]) and a.step == 2  # the next step draws new views
    state = a.state_dict()
    third = a.expand(x)
    torch.manual_seed(8)
    resumed = MLKD()
    resumed.setup({}, {})  # another seed now, restored from the checkpoint below
    assert not torch.equal(resumed.expand(x), third)
    resumed.load_state_dict(state)
    assert resumed.step == 2 and torch.equal(resumed.expand(x), third)
    with pytest.raises(RuntimeError, match="10 rows"):
        a({"logits": torch.zeros(5, 3)}, {"logits": torch.zeros(5, 3)}, torch.zeros(5, dtype=torch.long))


# ---- both: defaults, option errors, half precision -------------------------------------------------------------
def test_defaults_are_the_references_and_bad_options_are_user_errors():
    sskd, mlkd = parse_methods("sskd+mlkd")
    assert sskd.options() == {"kd_weight": 0.9, "tf_weight": 2.7, "ss_weight": 10.0, "temperature": 4.0,
                              "tf_temperature": 4.0, "ss_temperature": 0.5, "tf_ratio": 1.0, "ss_ratio": 0.75,
                              "ss_epochs": 60}
    assert mlkd.options() == {"temperature": 4.0, "weight": 0.9, "strong_ce_weight": 0.1}
    for m, needs in ((sskd, {"logits", "embedding"}), (mlkd, {"logits"})):
        assert (m.ce_weight, m.needs, m.cacheable, m.expands) == (0.1, needs, False, True)
    assert parse_methods("kd_ours")[0].name == "mlkd"
    for name, opts in (("sskd", {"tf_ratio": 1.5}), ("sskd", {"ss_ratio": -0.1}), ("sskd", {"ss_temperature": 0}),
                       ("sskd", {"tf_temperature": -1.0}), ("sskd", {"ss_epochs": -1}), ("sskd", {"ss_weight": -1.0}),
                       ("mlkd", {"temperature": 0.0}), ("mlkd", {"strong_ce_weight": -0.1})):
        with pytest.raises(UserError, match=name):
            parse_methods(name, {name: opts})


def test_half_precision_inputs_give_finite_float32_losses():
    student, teacher = _sskd_signals(30)
    half = lambda d: {k: v.detach().half() for k, v in d.items()}  # noqa: E731
    sskd = SSKD(ss_epochs=1)
    sskd.setup(student, teacher)
    for epoch in (0, 1):
        sskd.set_epoch(epoch)
        for v in sskd(half(student), half(teacher), torch.arange(B)).values():
            assert v.dtype == torch.float32 and torch.isfinite(v)
    terms = MLKD()({"logits": student["logits"].detach().half()[:12]}, {"logits": teacher["logits"].half()[:12]},
                   torch.arange(B))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
