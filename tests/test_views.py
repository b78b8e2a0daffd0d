"""Augmented views: counter-based uniforms, pad-and-crop and RandomResizedCrop policies, apply_views."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastkd.pipelines.view_policy import ViewPolicy, apply_views, uniforms

# ------------------------------------------------------------------------------------------ uniforms


def test_uniforms_are_a_pure_function_of_seed_epoch_index():
    index = np.arange(1000)
    full = uniforms(7, 3, index, 41)
    assert full.shape == (1000, 41) and full.dtype == np.float64
    rng = np.random.default_rng(0)
    perm = rng.permutation(1000)
    # any batch composition / order gives each index the same row
    np.testing.assert_array_equal(uniforms(7, 3, perm, 41), full[perm])
    np.testing.assert_array_equal(uniforms(7, 3, perm[:5], 41), full[perm[:5]])
    np.testing.assert_array_equal(uniforms(7, 3, [123], 41)[0], full[123])
    np.testing.assert_array_equal(uniforms(7, 3, np.array([5, 5]), 41), full[[5, 5]])
    # large dataset indices work too (no overflow surprises)
    big = uniforms(7, 3, np.array([2**40, 2**40 + 1]), 4)
    assert np.all((big >= 0) & (big < 1)) and not np.array_equal(big[0], big[1])


def test_uniforms_differ_across_seeds_epochs_indices():
    index = np.arange(500)
    base = uniforms(0, 0, index, 8)
    for other in (uniforms(1, 0, index, 8), uniforms(0, 1, index, 8), uniforms(1, 1, index, 8),
                  uniforms(0, 0, index + 500, 8)):
        assert not np.any(base == other)  # no shared value among 4000 doubles: independent streams
        assert abs(np.corrcoef(base.ravel(), other.ravel())[0, 1]) < 0.1
    # (seed, epoch) is not symmetric: swapping them gives another stream
    assert not np.array_equal(uniforms(1, 2, index, 4), uniforms(2, 1, index, 4))
    # rows of one sample are not a copy of each other and the columns are distinct streams
    assert len(np.unique(base)) == base.size


def test_uniforms_range_and_moments():
    u = uniforms(3, 5, np.arange(10_000), 4)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01  # sd of the mean over 40k draws: 0.0014
    assert abs(u.var() - 1 / 12) < 0.003
    counts, _ = np.histogram(u[:, 0], bins=10, range=(0, 1))
    assert counts.min() > 850 and counts.max() < 1150  # ~1000 per bin


# ------------------------------------------------------------------------------------------ pad_crop


def test_policy_choice_from_resolution():
    low = ViewPolicy.for_resolution(32, True)
    assert (low.kind, low.base, low.out) == ("pad_crop", 32, 32)
    assert ViewPolicy.for_resolution(64, True).kind == "pad_crop"
    high = ViewPolicy.for_resolution(224, True)
    assert (high.kind, high.base, high.out) == ("rrc", 256, 224)


def test_pad_crop_offsets():
    policy = ViewPolicy.for_resolution(32, train=True)
    pad = 4  # S/8 at 32
    view = policy.sample(11, 0, np.arange(10_000))
    box, flip = view["box"], view["flip"]
    assert box.shape == (10_000, 4) and flip.shape == (10_000,) and flip.dtype == bool
    offsets = box[:, :2]
    np.testing.assert_array_equal(offsets, np.round(offsets))  # integers
    assert offsets.min() == -pad and offsets.max() == pad
    assert set(np.unique(offsets).tolist()) == set(range(-pad, pad + 1))  # every offset is used
    np.testing.assert_array_equal(box[:, 2:], 32)
    assert 0.47 < flip.mean() < 0.53
    assert 0.45 < np.mean(offsets[:, 0] == offsets[:, 1]) * 9 < 1.55  # x and y drawn independently
    # the same index gets the same view whatever batch it is in, and a new one next epoch
    sub = policy.sample(11, 0, np.array([9_999, 3]))
    np.testing.assert_array_equal(sub["box"], box[[9_999, 3]])
    np.testing.assert_array_equal(sub["flip"], flip[[9_999, 3]])
    nxt = policy.sample(11, 1, np.arange(10_000))
    assert np.mean(np.all(nxt["box"] == box, axis=1) & (nxt["flip"] == flip)) < 0.05


def _manual_pad_crop(images: torch.Tensor, box: np.ndarray, flip: np.ndarray, pad: int) -> torch.Tensor:
    n, _, s, _ = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # zero fill
    out = []
    for i in range(n):
        x0, y0 = int(box[i, 0]) + pad, int(box[i, 1]) + pad
        crop = padded[i, :, y0 : y0 + s, x0 : x0 + s]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("res", [32, 48])
def test_apply_views_pad_crop_is_exact(res):
    policy = ViewPolicy.for_resolution(res, train=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, res, res), generator=g).float()
    view = policy.sample(2, 4, np.arange(300))
    got = apply_views(images, torch.from_numpy(view["box"]).float(), torch.from_numpy(view["flip"]), policy.out)
    expected = _manual_pad_crop(images, view["box"], view["flip"], res // 8)
    assert got.shape == (300, 3, res, res)
    # pixel-aligned crops copy the source pixels: measured max abs difference 0.0 at res 32 and 1.3e-3 (on a
    # 0..255 scale, float rounding of /48 in grid_sample) at res 48; a half-pixel shift would be ~50
    assert (got - expected).abs().max() < 0.01


def test_apply_views_shift_and_flip_by_hand():
    img = torch.arange(16.0).view(1, 1, 4, 4) + 1  # values 1..16, no zeros
    shifted = apply_views(img, torch.tensor([[1.0, -1.0, 4.0, 4.0]]), torch.tensor([False]), 4)[0, 0]
    expected = torch.zeros(4, 4)
    expected[1:, :3] = img[0, 0, :3, 1:]  # crop starts 1 px right and 1 px above the image
    assert torch.equal(shifted, expected)
    flipped = apply_views(img, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([True]), 4)[0, 0]
    assert torch.equal(flipped, img[0, 0].flip(-1))
    identity = apply_views(img, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([False]), 4)
    assert torch.equal(identity, img)


def test_pad_crop_eval_is_the_whole_image():
    policy = ViewPolicy.for_resolution(32, train=False)
    view = policy.sample(0, 0, np.arange(5))
    np.testing.assert_array_equal(view["box"], np.tile([0, 0, 32, 32], (5, 1)))
    assert not view["flip"].any()


# ----------------------------------------------------------------------------------------------- rrc


@pytest.mark.parametrize("res", [96, 224])
def test_rrc_boxes(res):
    policy = ViewPolicy.for_resolution(res, train=True)
    s = policy.base
    assert s == round(res / 0.875)
    view = policy.sample(4, 2, np.arange(20_000))
    x0, y0, w, h = view["box"].T
    for v in (x0, y0, w, h):
        np.testing.assert_array_equal(v, np.round(v))  # whole base pixels
    # inside the base image
    assert x0.min() >= 0 and y0.min() >= 0 and (x0 + w).max() <= s and (y0 + h).max() <= s
    assert w.min() >= 1 and h.min() >= 1
    # area fraction in [0.08, 1] and aspect in [3/4, 4/3] up to rounding w and h to whole pixels
    assert np.all((w + 0.5) * (h + 0.5) >= 0.08 * s * s)
    assert np.all((w - 0.5) * (h - 0.5) <= s * s)
    assert np.all((w + 0.5) / (h - 0.5) >= 3 / 4)
    assert np.all((w - 0.5) / (h + 0.5) <= 4 / 3)
    # the ranges are actually used (not stuck on the fallback or one corner)
    frac = w * h / (s * s)
    assert frac.min() < 0.1 and frac.max() > 0.9
    ratio = w / h
    assert ratio.min() < 0.78 and ratio.max() > 1.28
    assert np.mean((w == s) & (h == s)) < 0.02  # the whole-image fallback is rare
    assert (x0 + w / 2).mean() == pytest.approx(s / 2, rel=0.03)  # positions are uniform: centred on average
    assert 0.47 < view["flip"].mean() < 0.53
    # log-ratio is uniform: about as many tall as wide crops
    assert 0.45 < np.mean(w > h) / max(np.mean(w < h), 1e-9) * 0.5 < 0.55


def _tries(*tries):
    """One row of RRC uniforms: 10 tries of (area, ratio, x, y), padded with failing tries."""
    fail = (1.0 - 1e-12, 1.0 - 1e-12, 0.5, 0.5)  # full area at ratio 4/3: wider than the image
    tries = list(tries) + [fail] * (10 - len(tries))
    return np.array([v for t in tries for v in t], dtype=np.float64)[None, :]


def test_rrc_fallback_and_first_valid_try():
    policy = ViewPolicy.for_resolution(224, train=True)
    s = float(policy.base)
    # every try fails -> the whole (square) base image, torchvision's centre-crop rule
    np.testing.assert_array_equal(policy._rrc_boxes(_tries(), s), [[0, 0, s, s]])
    # the first valid try wins, however late it comes and whatever valid tries follow
    ok_small, ok_mid = (0.0, 0.5, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0)  # square crops of 8% and 54% of the area
    fail = (1.0 - 1e-12, 1.0 - 1e-12, 0.5, 0.5)
    small, mid = round(math.sqrt(0.08) * s), round(math.sqrt(0.54) * s)
    np.testing.assert_array_equal(policy._rrc_boxes(_tries(ok_small, ok_mid), s), [[0, 0, small, small]])
    np.testing.assert_array_equal(policy._rrc_boxes(_tries(ok_mid, ok_small), s), [[0, 0, mid, mid]])
    np.testing.assert_array_equal(policy._rrc_boxes(_tries(fail, ok_mid, ok_small), s), [[0, 0, mid, mid]])
    late = _tries(*([fail] * 9), ok_mid)
    np.testing.assert_array_equal(policy._rrc_boxes(late, s), [[0, 0, mid, mid]])
    # rows are independent: one row falling back does not disturb another
    both = policy._rrc_boxes(np.concatenate([_tries(), _tries(ok_small)]), s)
    np.testing.assert_array_equal(both, [[0, 0, s, s], [0, 0, small, small]])
    # position: x0 = floor(u * (s - w + 1)), so u close to 1 puts the crop at the far edge
    far = _tries((0.0, 0.5, 1.0 - 1e-12, 1.0 - 1e-12))
    np.testing.assert_array_equal(policy._rrc_boxes(far, s), [[s - small, s - small, small, small]])


def test_rrc_eval_is_the_centre_crop():
    policy = ViewPolicy.for_resolution(224, train=False)
    view = policy.sample(9, 3, np.arange(4))
    np.testing.assert_array_equal(view["box"], np.tile([16, 16, 224, 224], (4, 1)))
    assert not view["flip"].any()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 256, 256, generator=g)
    got = apply_views(images, torch.from_numpy(view["box"]).float(), torch.from_numpy(view["flip"]), policy.out)
    assert got.shape == (4, 3, 224, 224)
    torch.testing.assert_close(got, images[:, :, 16:240, 16:240], rtol=0, atol=1e-4)  # measured 1.5e-5


def test_rrc_downscaled_crops_stay_inside():
    """Crops at least as large as the output only sample inside the box: a constant image stays constant."""
    s, out = 110, 96
    images = torch.ones(3, 3, s, s)
    box = torch.tensor([[0.0, 0.0, s, s], [s - 100.0, 0.0, 100.0, 100.0], [0.0, s - 96.0, 96.0, 96.0]])
    got = apply_views(images, box, torch.tensor([False, True, False]), out)
    assert got.shape == (3, 3, out, out)
    torch.testing.assert_close(got, torch.ones_like(got), rtol=0, atol=1e-5)


def test_rrc_upscaled_crops_at_the_border_are_not_darkened():
    s, out = 110, 96
    images = torch.ones(2, 3, s, s)
    box = torch.tensor([[0.0, 0.0, 48.0, 48.0], [s - 48.0, s - 60.0, 48.0, 60.0]])  # touch the borders
    got = apply_views(images, box, torch.tensor([False, False]), out, padding=ViewPolicy.for_resolution(out, True).padding)
    torch.testing.assert_close(got, torch.ones_like(got), rtol=0, atol=1e-5)
    dark = apply_views(images, box, torch.tensor([False, False]), out, padding="zeros")
    assert dark.min() < 0.9  # the defect this guards against: zero padding blends black into the edge


@pytest.mark.parametrize("res", [32, 48])
def test_integer_pad_crop_equals_the_grid_sample_path(res):
    from fastkd.pipelines.view_policy import pad_crop_flip

    policy = ViewPolicy.for_resolution(res, True)
    index = np.arange(64)
    view = policy.sample(7, 3, index)
    images = torch.randint(0, 256, (64, res, res, 3), dtype=torch.uint8)
    box, flip = torch.from_numpy(view["box"]).float(), torch.from_numpy(view["flip"])
    fast = pad_crop_flip(images, box, flip, policy.pad)
    slow = apply_views(images.permute(0, 3, 1, 2).float(), box, flip, res, policy.padding)
    assert fast.dtype == torch.float32 and fast.shape == (64, 3, res, res)
    assert torch.equal(fast, fast.round())  # copied pixels, no interpolation
    assert (fast - slow).abs().max().item() < 0.01  # grid_sample agrees up to float rounding
    assert flip.any() and (~flip).any() and (box[:, 0] != 0).any()
