"""RKD's distances and angles from the batch's Gram matrix (fastkd/methods/rkd.py) equal the reference's direct
N x N x D differences, computed in float64, on the embeddings a training batch has: non-negative (after a ReLU and
pooling) with a large common part, and near-copies (several views of one photo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastkd.methods.rkd import rkd_angle_loss, rkd_distance_loss


def _direct(s: torch.Tensor, t: torch.Tensor):
    """The authors' form (pairwise differences, ``F.normalize``), in float64."""
    def differences(x):
        d = x.unsqueeze(0) - x.unsqueeze(1)
        return d, d.norm(dim=2)

    def psi_d(x):
        n = x.shape[0]
        dist = differences(x)[1]
        return dist / (dist.sum() / (n * (n - 1)))

    def psi_a(x):
        e = F.normalize(differences(x)[0], p=2, dim=2)
        return torch.bmm(e, e.transpose(1, 2))

    return F.smooth_l1_loss(psi_d(s), psi_d(t)), F.smooth_l1_loss(psi_a(s), psi_a(t))


def _batch(seed: int, photos: int = 16, views: int = 4, width: int = 256, spread: float = 1e-3):
    g = torch.Generator().manual_seed(seed)
    common = 5.0 + torch.rand(width, generator=g)  # a large shared part: Gram entries >> distances
    photo = torch.relu(common + 0.5 * torch.randn(photos, width, generator=g))
    return torch.cat([photo + spread * torch.randn(photos, width, generator=g) for _ in range(views)])


def test_gram_form_equals_the_direct_differences_in_float64_on_close_nonnegative_embeddings():
    s, t = _batch(0), 2.0 * _batch(1)
    ref = s.double().requires_grad_()
    dist, angle = _direct(ref, t.double())
    (25 * dist + 50 * angle).backward()
    x = s.clone().requires_grad_()
    got_dist, got_angle = rkd_distance_loss(x, t), rkd_angle_loss(x, t)
    (25 * got_dist + 50 * got_angle).backward()
    assert abs(got_dist.item() / dist.item() - 1) < 1e-5
    assert abs(got_angle.item() / angle.item() - 1) < 1e-5
    assert ((x.grad.double() - ref.grad).norm() / ref.grad.norm()).item() < 1e-4


def test_exact_copies_count_as_one_point_and_the_loss_does_not_depend_on_the_batch_order():
    s, t = _batch(2, photos=8, views=1), _batch(3, photos=8, views=1)
    s, t = torch.cat([s, s[:2]]), torch.cat([t, t[:2]])  # two exact copies in each network
    x = s.clone().requires_grad_()
    loss = rkd_distance_loss(x, t) + rkd_angle_loss(x, t)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max().item() < 1.0
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    moved = rkd_distance_loss(s[order], t[order]) + rkd_angle_loss(s[order], t[order])
    assert abs(moved.item() / loss.item() - 1) < 1e-5
