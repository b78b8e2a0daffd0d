"""CRD (contrastive representation distillation): the NCE loss against a float64 computation written out from
the paper's formula, the memory bank update, the negatives, checkpoint round trip / exact resume, gradient
flow, two ranks, and a real model pair at 32x32.

``fastkd.methods.crd`` is imported inside the tests, not at module level: importing it registers ``crd``, and
``tests/test_methods.py`` parametrises over every registered method when it is collected."""
from __future__ import annotations

import copy
import io
import math
import os

import numpy as np
import pytest
import torch

from fastkd.errors import UserError

EPS = 1e-7


def _crd():
    from fastkd.methods import crd

    return crd


def _method(n, s_dim=5, t_dim=6, seed=11, **kw):
    m = _crd().CRD(seed=seed, **kw)
    m.dataset_size = n
    m.setup({"embedding": torch.zeros(2, s_dim)}, {"embedding": torch.zeros(2, t_dim)})
    return m


def _np(t):
    return t.detach().double().numpy()


# ---- reference, float64, from the paper's formula -------------------------------------------------------
def _embed(x, weight, bias):
    y = x @ weight.T + bias
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def ref_direction(anchor, memory, idx, T, n_data, z=None):
    """One direction of eq. 18: P = exp(m . a / T) / Z, h = P / (P + K/N); returns (loss, Z)."""
    b_size, k1 = idx.shape
    p = np.array([[math.exp(memory[idx[b, j]] @ anchor[b] / T) for j in range(k1)] for b in range(b_size)])
    if z is None:
        z = p.mean() * n_data  # the reference's estimate on the first batch
    p = p / z
    noise = (k1 - 1) / n_data
    loss = 0.0
    for b in range(b_size):
        loss -= math.log(p[b, 0] / (p[b, 0] + noise + EPS))
        for j in range(1, k1):
            loss -= math.log(noise / (p[b, j] + noise + EPS))
    return loss / b_size, z


def ref_update(memory, index, v, momentum):
    out = memory.copy()
    for i, row in zip(index, v):
        new = momentum * memory[i] + (1 - momentum) * row
        out[i] = new / np.linalg.norm(new)
    return out


# ---- loss ------------------------------------------------------------------------------------------------
def test_nce_loss_matches_float64_formula_on_tiny_tensors():
    crd = _crd()
    rng = np.random.default_rng(0)
    n, k, d, T = 7, 3, 4, 0.07
    anchor = rng.normal(size=(2, d))
    anchor /= np.linalg.norm(anchor, axis=1, keepdims=True)
    memory = rng.uniform(-0.8, 0.8, size=(n, d))
    idx = np.array([[2, 0, 5, 5], [6, 1, 3, 0]])
    z = 3.5
    expected, _ = ref_direction(anchor, memory, idx, T, n, z)
    for dense in (True, False):
        a, mem = torch.tensor(anchor, dtype=torch.float32), torch.tensor(memory, dtype=torch.float32)
        p = crd.contrast_exp_scores(a, mem, torch.tensor(idx), T, dense=dense)
        assert crd.nce_loss(p / z, n).item() == pytest.approx(expected, rel=1e-5)
    # one written-out case: P_pos = 0.5, P_neg = 0.25, K/N = 1/4
    p = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    by_hand = -(math.log(0.5 / (0.75 + EPS)) + math.log(0.25 / (0.5 + EPS)))
    assert crd.nce_loss(p, 4).item() == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(math.log(3.0), rel=1e-6)


def test_dense_and_gathered_scoring_agree_in_value_and_gradient():
    crd = _crd()
    g = torch.Generator().manual_seed(1)
    memory = torch.randn(50, 8, generator=g)
    idx = torch.randint(0, 50, (3, 9), generator=g)
    out = []
    for dense in (True, False):
        a = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        p = crd.contrast_exp_scores(a, memory, idx, 0.5, dense=dense)
        p.log().sum().backward()
        out.append((p.detach(), a.grad))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-5) and torch.allclose(out[0][1], out[1][1], rtol=1e-5)
    assert crd.dense_scoring(50000, 16384, 128) and not crd.dense_scoring(3_300_000, 16384, 128)


def test_method_both_directions_first_batch_Z_and_weight_match_reference():
    crd = _crd()
    n, T = 7, 0.07
    torch.manual_seed(0)
    m = _method(n, feat_dim=4, nce_k=3)
    assert (m.k, m.weight, m.ce_weight, m.needs) == (3, 0.8, 1.0, {"embedding"})
    g = torch.Generator().manual_seed(3)
    w = {k: _np(v) for k, v in m.state_dict().items() if k != "_extra_state"}
    mem_s, mem_t = w["memory_s"], w["memory_t"]
    z_s = z_t = None
    for step, index in enumerate(([4, 0, 6], [1, 4, 2])):
        s, t = torch.randn(3, 5, generator=g), torch.randn(3, 6, generator=g)
        index = torch.tensor(index)
        idx = torch.cat([index[:, None], crd.sample_negatives(index, n, 3, 11, step)], 1).numpy()
        fs = _embed(_np(s), w["embed_s.linear.weight"], w["embed_s.linear.bias"])
        ft = _embed(_np(t), w["embed_t.linear.weight"], w["embed_t.linear.bias"])
        loss_s, z_s = ref_direction(fs, mem_t, idx, T, n, z_s)  # student anchor vs teacher memory
        loss_t, z_t = ref_direction(ft, mem_s, idx, T, n, z_t)  # teacher anchor vs student memory
        terms = m({"embedding": s}, {"embedding": t}, None, index)
        assert list(terms) == ["crd"]
        assert terms["crd"].item() == pytest.approx(0.8 * (loss_s + loss_t), rel=1e-5)
        # Z is estimated on the first batch and then kept
        assert (m.z_s.item(), m.z_t.item()) == (pytest.approx(z_s, rel=1e-5), pytest.approx(z_t, rel=1e-5))
        mem_s, mem_t = ref_update(mem_s, index.numpy(), fs, 0.5), ref_update(mem_t, index.numpy(), ft, 0.5)
        assert np.allclose(_np(m.memory_s), mem_s, atol=1e-6) and np.allclose(_np(m.memory_t), mem_t, atol=1e-6)
    assert m.step == 2


# ---- memory bank -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False])
def test_memory_update_moves_and_renormalises_only_the_positives(dense):
    n = 9
    m = _method(n, feat_dim=3, nce_k=2)
    m._dense = dense
    before = {k: getattr(m, k).clone() for k in ("memory_s", "memory_t")}
    stdv = 1 / math.sqrt(3 / 3)
    assert all(v.abs().max() <= stdv and v.abs().max() > 0.5 * stdv for v in before.values())  # uniform init
    s, t = torch.randn(2, 5), torch.randn(2, 6)
    m({"embedding": s}, {"embedding": t}, None, torch.tensor([5, 2]))
    fs, ft = m.embed_s(s).detach(), m.embed_t(t).detach()
    for name, v in (("memory_s", fs), ("memory_t", ft)):
        after, old = getattr(m, name), before[name]
        others = [i for i in range(n) if i not in (2, 5)]
        assert torch.equal(after[others], old[others])
        for row, i in enumerate((5, 2)):
            new = 0.5 * old[i].double() + 0.5 * v[row].double()
            assert torch.allclose(after[i].double(), new / new.norm(), atol=1e-6)
            assert after[i].norm().item() == pytest.approx(1.0, abs=1e-6)


# ---- negatives -------------------------------------------------------------------------------------------
def test_negatives_exclude_the_positive_are_uniform_and_a_pure_function_of_seed_and_step():
    crd = _crd()
    n, k = 5, 4000
    index = torch.tensor([0, 3, 4, 3])
    neg = crd.sample_negatives(index, n, k, seed=7, step=12)
    assert neg.shape == (4, k) and neg.dtype == torch.int64
    assert not (neg == index[:, None]).any() and neg.min() >= 0 and neg.max() < n
    for row, pos in zip(neg, index.tolist()):
        counts = torch.bincount(row, minlength=n).double() / k
        assert counts[pos] == 0 and torch.allclose(counts[[i for i in range(n) if i != pos]],
                                                   torch.full((n - 1,), 0.25, dtype=torch.float64), atol=0.04)
    torch.manual_seed(123)  # the global generator plays no part
    torch.rand(10)
    assert torch.equal(crd.sample_negatives(index, n, k, seed=7, step=12), neg)
    for other in (dict(seed=7, step=13), dict(seed=8, step=12)):
        assert not torch.equal(crd.sample_negatives(index, n, k, **other), neg)


def test_negatives_capped_at_n_minus_1():
    m = _method(10)  # nce_k 16384 by default
    assert m.k == 9 and m.nce_k == 16384


# ---- state -----------------------------------------------------------------------------------------------
def _steps(m, count, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        s, t = torch.randn(4, 5, generator=g), torch.randn(4, 6, generator=g)
        index = torch.randperm(12, generator=g)[:4]
        out.append(m({"embedding": s}, {"embedding": t}, None, index)["crd"])
    return out


def test_state_dict_round_trip_restores_banks_Z_and_step_so_a_resume_is_exact():
    torch.manual_seed(0)
    a = _method(12, nce_k=5)
    _steps(a, 3, seed=1)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as the trainer's checkpoint does
    assert {"memory_s", "memory_t", "z_s", "z_t", "_extra_state"} <= set(a.state_dict())
    assert a.z_s.item() > 0 and a.z_t.item() > 0
    (after_a,) = _steps(copy.deepcopy(a), 1, seed=2)

    torch.manual_seed(99)  # other heads, other seed, fresh banks: everything must come from the state dict
    b = _method(12, nce_k=5, seed=12345)
    assert not torch.equal(b.memory_s, a.memory_s)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.step == 3 and b.options()["seed"] == 11
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(getattr(b, name), getattr(a, name))
    (after_b,) = _steps(b, 1, seed=2)
    assert torch.equal(after_a, after_b)  # same negatives at step 3, same banks, same Z


# ---- gradients -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False])
def test_gradients_reach_student_embedding_and_heads_not_teacher(dense):
    m = _method(40, feat_dim=8, nce_k=6)
    m._dense = dense
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    for step in range(2):  # the second step scores against banks the first one updated
        s.grad = None
        m.zero_grad(set_to_none=True)
        loss = m({"embedding": s}, {"embedding": t}, None, torch.tensor([3, 9, 0, 39]))["crd"]
        loss.backward()
        assert torch.isfinite(loss)
        assert t.grad is None
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        for p in m.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in m.buffers())
    assert {n for n, _ in m.named_parameters()} == {"embed_s.linear.weight", "embed_s.linear.bias",
                                                    "embed_t.linear.weight", "embed_t.linear.bias"}


# ---- errors and options -----------------------------------------------------------------------------------
def test_missing_dataset_size_or_index_and_bad_options_are_clear_errors():
    crd = _crd()
    sig = {"embedding": torch.zeros(2, 4)}
    with pytest.raises(UserError, match="dataset_size is not set"):
        crd.CRD().setup(sig, sig)
    m = _method(6, s_dim=4, t_dim=4)
    with pytest.raises(UserError, match="needs the dataset index"):
        m(sig, sig, None)
    with pytest.raises(UserError, match=r"outside \[0, 6\)"):
        m(sig, sig, None, torch.tensor([0, 6]))
    with pytest.raises(RuntimeError, match="setup"):
        crd.CRD()(sig, sig, None, torch.tensor([0, 1]))
    for bad in (dict(temperature=0), dict(momentum=1.0), dict(nce_k=0), dict(seed="x")):
        with pytest.raises(UserError):
            crd.CRD(**bad)
    assert crd.CRD().options() == {"weight": 0.8, "feat_dim": 128, "nce_k": 16384, "temperature": 0.07,
                                   "momentum": 0.5, "seed": None}
    from fastkd.methods import METHODS

    assert METHODS.get("crd") is crd.CRD


# ---- real models -----------------------------------------------------------------------------------------
def test_resnet32_teacher_to_shufflenet_student_at_32x32():
    from fastkd.models import FeatureTaps, create_model

    torch.manual_seed(0)
    teacher = create_model("resnet32", 10, True).eval()
    student = create_model("shufflenet_v2_x0_5", 10, True)
    m = _crd().CRD()
    m.dataset_size = 40
    with FeatureTaps(student, ["embedding"]) as s_taps, FeatureTaps(teacher, ["embedding"]) as t_taps:
        with torch.no_grad():  # the trainer's dry forward
            student.eval()
            student(torch.zeros(2, 3, 32, 32))
            teacher(torch.zeros(2, 3, 32, 32))
            m.setup(dict(s_taps.outputs), dict(t_taps.outputs))
        student.train()
        assert m.k == 39 and m.memory_s.shape == (40, 128)
        opt = torch.optim.SGD(list(student.parameters()) + list(m.parameters()), lr=0.01)
        g = torch.Generator().manual_seed(0)
        for index in ([0, 17, 39, 5], [8, 2, 33, 17]):
            x = torch.randn(4, 3, 32, 32, generator=g)
            s = {"logits": student(x), **s_taps.outputs}
            with torch.no_grad():
                t = {"logits": teacher(x), **t_taps.outputs}
            loss = m(s, t, torch.zeros(4, dtype=torch.long), torch.tensor(index))["crd"]
            assert torch.isfinite(loss) and loss.item() > 0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in student.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            opt.step()
    assert all(p.grad is None for p in teacher.parameters())


# ---- two ranks ---------------------------------------------------------------------------------------------
def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same heads on every rank
        m = _method(10, feat_dim=4, nce_k=3)
        g = torch.Generator().manual_seed(100 + rank)
        s, t = torch.randn(2 + rank, 5, generator=g), torch.randn(2 + rank, 6, generator=g)  # unequal batches
        index = torch.tensor([[1, 7], [4, 0, 9]][rank])
        m({"embedding": s}, {"embedding": t}, None, index)
        torch.save({"state": m.state_dict(), "s": s, "t": t, "index": index}, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (a SIGABRT otherwise)
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_identical_banks_updated_with_every_ranks_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2))
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(r0["state"][name], r1["state"][name])
    torch.manual_seed(0)
    m = _method(10, feat_dim=4, nce_k=3)  # the initial state every rank started from
    for name, head, key in (("memory_s", m.embed_s, "s"), ("memory_t", m.embed_t, "t")):
        expected = _np(getattr(m, name))
        for r in (r0, r1):
            expected = ref_update(expected, r["index"].numpy(), _np(head(r[key])), 0.5)
        assert np.allclose(_np(r0["state"][name]), expected, atol=1e-6)
