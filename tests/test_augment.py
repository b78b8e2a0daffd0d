"""Batch augmentation: random erasing, cutout, mixup, cutmix as pure functions of (seed, epoch, index)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from fastkd.errors import UserError
from fastkd.pipelines import Loader
from fastkd.pipelines.augment import (CUTMIX, MIXUP, NONE, AugmentConfig, Augmenter, apply_cutout, apply_erasing,
                                      apply_mixing, box_mask, fill_values, pair_positions, sample_cutout,
                                      sample_erasing, sample_mixing)

RES = 32
MEAN, STD = torch.full((1, 3, 1, 1), 120.0), torch.full((1, 3, 1, 1), 60.0)  # 0..255 scale, as the Loader's

# ------------------------------------------------------------------------------------------- erasing


@pytest.mark.parametrize("res", [32, 224])
def test_erasing_boxes_follow_the_paper(res):
    cfg = AugmentConfig.paper(erasing=True)
    assert (cfg.erasing_p, cfg.erasing_scale, cfg.erasing_ratio) == (0.5, (0.02, 0.4), (0.3, 1 / 0.3))
    view = sample_erasing(cfg, 5, 1, np.arange(20_000), res)
    box, key = view["erase_box"], view["erase_key"]
    assert box.dtype == key.dtype == np.int64 and box.shape == (20_000, 4)
    erased = box[:, 2] > 0
    assert 0.48 < erased.mean() < 0.52  # p = 0.5; sd of the mean 0.0035, and the 50-try cap almost never bites
    np.testing.assert_array_equal(box[~erased], 0)
    x0, y0, w, h = box[erased].T.astype(float)
    assert x0.min() >= 0 and y0.min() >= 0 and (x0 + w).max() <= res and (y0 + h).max() <= res  # inside
    assert w.min() >= 1 and h.min() >= 1
    # area fraction in [sl, sh] and aspect He/We in [r1, 1/r1], up to rounding He and We to whole pixels
    area = res * res
    assert np.all((w + 0.5) * (h + 0.5) >= 0.02 * area) and np.all((w - 0.5) * (h - 0.5) <= 0.4 * area)
    assert np.all((h + 0.5) / (w - 0.5) >= 0.3) and np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3)
    frac, ratio = w * h / area, h / w
    assert frac.min() < 0.03 and frac.max() > 0.35 and ratio.min() < 0.4 and ratio.max() > 2.5  # ranges used
    assert abs(np.mean(x0 + w / 2) - res / 2) < 0.03 * res  # positions spread over the image
    # a pure function of (seed, epoch, index): any subset / order gives the same rows, another epoch differs
    sub = sample_erasing(cfg, 5, 1, np.array([19_999, 7]), res)
    np.testing.assert_array_equal(sub["erase_box"], box[[19_999, 7]])
    np.testing.assert_array_equal(sub["erase_key"], key[[19_999, 7]])
    assert np.mean(np.all(sample_erasing(cfg, 5, 2, np.arange(20_000), res)["erase_box"] == box, 1)) < 0.6


def test_erasing_replaces_the_box_pixels_only():
    cfg = AugmentConfig(erasing_p=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, RES, RES, generator=g)
    index = np.arange(1000, 1064)
    out, targets, view = Augmenter(cfg, 2, RES, MEAN, STD, 10)(x, torch.zeros(64, dtype=torch.int64), index, 0, 3)
    assert targets is None and set(view) == {"erase_box", "erase_key"}
    mask = box_mask(view["erase_box"], RES, RES).expand_as(x)
    assert 10 < (view["erase_box"][:, 2] > 0).sum() < 54
    assert torch.equal(out[~mask], x[~mask])  # untouched outside the boxes
    grey = out[mask] * 60 + 120  # back to 0..255: integer pixel values, uniform over 0..255
    assert torch.allclose(grey, grey.round(), atol=1e-3)
    counts = torch.bincount(grey.round().long(), minlength=256)
    assert len(counts) == 256 and scipy.stats.chisquare(counts.numpy()).pvalue > 1e-4
    assert (out[mask] != x[mask]).float().mean() > 0.999
    # a value per pixel and channel, not one per box: neighbours agree only by chance (1/256)
    erased = out[mask.all(1, keepdim=True).expand_as(out)].view(-1)
    assert (erased[1:] == erased[:-1]).float().mean() < 0.02
    # the fill is a pure function of the key: replay gives the same pixels, another key others
    again = apply_erasing(x, view["erase_box"], view["erase_key"], MEAN, STD)
    assert torch.equal(again, out)
    f = fill_values(torch.tensor([7, 7, 8, 2**52 + 7]), 3, 8, 8).float()
    assert f.shape == (4, 3, 8, 8) and torch.equal(f[0], f[1])
    assert (f[0] - f[2]).abs().mean() > 50 and (f[0] - f[3]).abs().mean() > 50  # |U - U'| averages 85


def test_erasing_fill_windows_are_independent():
    """Over many keys: each value uniform over 0..255, no two keys sharing their windows."""
    keys = torch.from_numpy(sample_erasing(AugmentConfig(erasing_p=1.0), 0, 0, np.arange(2000), RES)["erase_key"])
    f = fill_values(keys, 3, RES, RES)
    assert f.dtype == torch.uint8 and f.shape == (2000, 3, RES, RES)
    counts = torch.bincount(f.view(-1).long(), minlength=256).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-4
    flat = f.view(2000, -1).float()
    # correlation of every pair of keys' fills at the same position: none near 1
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    corr = (z @ z.T / flat.shape[1]).fill_diagonal_(0)
    assert corr.abs().max() < 0.15


# -------------------------------------------------------------------------------------------- cutout


def test_cutout_square_is_clipped_at_the_border():
    cfg = AugmentConfig.paper(cutout=True)
    assert cfg.cutout == 0.5 and cfg.cutout_p == 1.0  # 16 px at 32 (DeVries & Taylor, CIFAR-10)
    box = sample_cutout(cfg, 1, 0, np.arange(20_000), RES)["cutout_box"]
    x0, y0, w, h = box.T
    assert x0.min() >= 0 and y0.min() >= 0 and (x0 + w).max() <= RES and (y0 + h).max() <= RES
    for lo, side in ((x0, w), (y0, h)):
        assert side.min() == 8 and side.max() == 16  # centre pixel 0 keeps half of the square
        clipped = side < 16
        assert np.all((lo[clipped] == 0) | (lo[clipped] + side[clipped] == RES))  # only where it meets the border
        assert abs(clipped.mean() - 15 / 32) < 0.02  # centre uniform: clipped for 8 + 7 of the 32 centres
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, RES, RES, generator=g)
    out = apply_cutout(x, torch.from_numpy(box[:16]))
    mask = box_mask(torch.from_numpy(box[:16]), RES, RES).expand_as(x)
    assert torch.equal(out[~mask], x[~mask]) and torch.all(out[mask] == 0)  # 0 = the mean pixel after normalising


# ------------------------------------------------------------------------------------- mixup / cutmix


def test_pair_positions():
    np.testing.assert_array_equal(pair_positions(32, 6), [1, 0, 3, 2, 5, 4])
    np.testing.assert_array_equal(pair_positions(0, 5), [1, 0, 3, 2, 4])  # last unpaired sample: itself
    np.testing.assert_array_equal(pair_positions(3, 4), [0, 2, 1, 3])  # partners outside the batch: itself


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_beta(alpha):
    cfg = AugmentConfig(mixup_alpha=alpha)
    first = np.arange(0, 10_000, 2)
    view = sample_mixing(cfg, 4, 0, first, first + 1, RES)
    assert np.all(view["mix_kind"] == MIXUP) and view["mix_lam"].dtype == np.float32
    assert scipy.stats.kstest(view["mix_lam"], scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(view["mix_lam"], scipy.stats.beta(2 * alpha, alpha).cdf).pvalue < 1e-3  # has power
    other = sample_mixing(cfg, 4, 0, first + 1, first, RES)  # the partners draw the very same lam
    np.testing.assert_array_equal(other["mix_lam"], view["mix_lam"])


def test_cutmix_lambda_is_the_kept_area():
    cfg = AugmentConfig.paper(cutmix=True)
    first = np.arange(0, 10_000, 2)
    view = sample_mixing(cfg, 4, 0, first, first + 1, RES)
    box, lam = view["mix_box"], view["mix_lam"]
    assert np.all(view["mix_kind"] == CUTMIX)
    x0, y0, w, h = box.T
    assert x0.min() >= 0 and y0.min() >= 0 and (x0 + w).max() <= RES and (y0 + h).max() <= RES
    np.testing.assert_array_equal(lam, (1 - w * h / RES**2).astype(np.float32))
    assert np.mean((w < h) | (w > h)) > 0.3  # clipped at the border: not always square
    # clipping only shrinks the box, so lam is at least its U(0, 1) draw
    assert lam.min() < 0.1 and lam.max() > 0.95 and 0.5 < lam.mean() < 0.75
    np.testing.assert_array_equal(sample_mixing(cfg, 4, 0, first + 1, first, RES)["mix_box"], box)


def test_both_mixes_are_chosen_per_pair_and_mix_prob():
    first = np.arange(0, 8000, 2)
    both = sample_mixing(AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0), 0, 0, first, first + 1, RES)
    assert 0.46 < np.mean(both["mix_kind"] == CUTMIX) < 0.54 and np.all(both["mix_kind"] != NONE)
    np.testing.assert_array_equal(both["mix_box"][both["mix_kind"] == MIXUP], 0)
    some = sample_mixing(AugmentConfig(mixup_alpha=1.0, mix_prob=0.3), 0, 0, first, first + 1, RES)
    none = some["mix_kind"] == NONE
    assert 0.66 < none.mean() < 0.74 and np.all(some["mix_lam"][none] == 1)
    lone = sample_mixing(AugmentConfig(mixup_alpha=1.0), 0, 0, np.array([5]), np.array([5]), RES)
    assert lone["mix_kind"][0] == NONE and lone["mix_lam"][0] == 1


def test_cutmix_pastes_the_partner_inside_the_box():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, RES, RES, generator=g)
    labels = torch.arange(8)
    out, targets, view = Augmenter(AugmentConfig(cutmix_alpha=1.0), 0, RES, MEAN, STD, 8)(x, labels, np.arange(8), 0, 0)
    partner = torch.from_numpy(pair_positions(0, 8))
    mask = box_mask(view["mix_box"], RES, RES).expand_as(x)
    assert torch.equal(out[mask], x[partner][mask]) and torch.equal(out[~mask], x[~mask])
    lam = view["mix_lam"]
    np.testing.assert_allclose(targets[torch.arange(8), labels], lam)
    np.testing.assert_allclose(targets[torch.arange(8), labels[partner]], 1 - lam, atol=1e-7)


# --------------------------------------------------------------------------------------------- Loader

ALL = AugmentConfig(erasing_p=0.5, cutout=0.25, mixup_alpha=1.0, cutmix_alpha=1.0)


def _collect(loader: Loader, epoch: int) -> dict:
    out = {"sizes": []}
    for b in loader.epoch(epoch):
        out["sizes"].append(len(b.labels))
        items = {"images": b.images, "labels": b.labels, "index": b.index, **b.view.entries()}
        if b.targets is not None:
            items["targets"] = b.targets
        for k, v in items.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) if k != "sizes" else v for k, v in out.items()}


@pytest.fixture(scope="module")
def loaders(orl_data):
    made = {}

    def make(name, **kw):
        if name not in made:
            settings = dict(backend="torch", batch_size=32, res=RES, seed=3, workers=0) | kw
            made[name] = Loader(orl_data, "train", **settings)
        return made[name]

    yield make
    for loader in made.values():
        loader.__dict__.pop("backend", None)  # free the backend now (see test_pipelines._release)


def test_loader_mixes_images_and_targets_consistently(loaders):
    plain = _collect(loaders("plain"), 1)
    mixed = _collect(loaders("mix", augment=AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0)), 1)
    assert "targets" not in plain and torch.equal(plain["index"], mixed["index"])
    x, y, idx = plain["images"], plain["labels"], plain["index"]
    p = torch.arange(len(idx)) ^ 1  # positions 2k and 2k+1 of the epoch order are partners
    assert torch.equal(mixed["mix_partner"], idx[p])
    lam, kind = mixed["mix_lam"], mixed["mix_kind"]
    assert torch.equal(lam, lam[p]) and torch.equal(kind, kind[p])  # one draw per pair
    assert torch.equal(mixed["mix_box"], mixed["mix_box"][p])
    assert all(0.3 < float((kind == k).float().mean()) < 0.7 for k in (MIXUP, CUTMIX))
    # the images, rebuilt by hand from the two source views with the batch's lam and box
    l4 = lam.view(-1, 1, 1, 1)
    cut = box_mask(mixed["mix_box"], RES, RES) & (kind == CUTMIX).view(-1, 1, 1, 1)
    expected = torch.where((kind == MIXUP).view(-1, 1, 1, 1), l4 * x + (1 - l4) * x[p], torch.where(cut, x[p], x))
    torch.testing.assert_close(mixed["images"], expected, rtol=0, atol=1e-6)
    # and the targets with the same lam
    onehot = F.one_hot(y, 40).float()
    torch.testing.assert_close(mixed["targets"], lam[:, None] * onehot + (1 - lam[:, None]) * onehot[p], rtol=0, atol=0)
    # erasing and cutout come after mixing; replaying the view entries gives the batch exactly
    full = _collect(loaders("all", augment=ALL), 1)
    for k in ("mix_partner", "mix_lam", "mix_kind", "mix_box", "targets"):
        assert torch.equal(full[k], mixed[k]), k
    replay = apply_mixing(x, p, lam, kind, full["mix_box"])
    loader = loaders("all")
    rows = full["erase_box"][:, 2] > 0
    replay[rows] = apply_erasing(replay[rows], full["erase_box"][rows], full["erase_key"][rows], loader._mean,
                                 loader._std)
    replay = apply_cutout(replay, full["cutout_box"])
    assert torch.equal(full["images"], replay)
    assert torch.all(full["cutout_box"][:, 2] > 0) and 0.3 < rows.float().mean() < 0.7


def test_views_are_the_same_across_backends_and_batch_sizes(loaders):
    ref = _collect(loaders("all", augment=ALL), 1)
    keys = ["index", "labels", "box", "flip", "mix_partner", "mix_lam", "mix_kind", "mix_box", "erase_box",
            "erase_key", "cutout_box", "targets"]
    assert set(ref) == set(keys) | {"images", "sizes"}
    small = _collect(loaders("all16", augment=ALL, batch_size=16), 1)
    assert small["sizes"] == [16] * 20
    for k in keys + ["images"]:
        assert torch.equal(small[k], ref[k]), k
    pytest.importorskip("nvidia.dali")
    dali = _collect(loaders("dali", augment=ALL, backend="dali"), 1)
    for k in keys:
        assert torch.equal(dali[k], ref[k]), k
    grey = (dali["images"] - ref["images"]).abs() * 60  # the decoders differ a little (test_pipelines: mean 2.4)
    assert grey.mean() < 5


def test_odd_batches(loaders, orl_data):
    odd = dict(backend="torch", batch_size=33, res=RES, workers=0)
    with pytest.raises(UserError, match="even batch size"):
        Loader(orl_data, "train", augment=AugmentConfig(cutmix_alpha=1.0), **odd)
    # only erasing/cutout: any batch size; evaluation ignores augment
    assert Loader(orl_data, "train", augment=AugmentConfig(erasing_p=0.5), **odd).augment
    assert Loader(orl_data, "test", train=False, augment=ALL, **odd).augment is None
    # ranks deal global batches in blocks of B, so with an even B every rank gets whole pairs: 320 samples,
    # 3 ranks of 32: rank 0 takes blocks 0, 3, 6 and the last partial global batch's 32
    got = _collect(loaders("ranked", augment=AugmentConfig(mixup_alpha=1.0), world=3, drop_last=False), 0)
    assert got["sizes"] == [32, 32, 32, 32] and torch.all(got["mix_kind"] == MIXUP)
    # an odd batch end (position 10 of 11 has no partner at 11): that sample is not mixed
    labels = torch.arange(11) % 40
    _, targets, view = Augmenter(AugmentConfig(mixup_alpha=1.0), 0, RES, MEAN, STD, 40)(
        torch.zeros(11, 3, RES, RES), labels, np.arange(11), 0, 0)
    assert view["mix_kind"][-1] == NONE and view["mix_lam"][-1] == 1 and view["mix_partner"][-1] == 10
    assert torch.equal(targets[-1], F.one_hot(labels[-1], 40).float())
    assert torch.all(view["mix_kind"][:-1] == MIXUP)


def test_config_checks():
    for bad in (dict(erasing_p=1.5), dict(erasing_scale=(0.5, 0.2)), dict(mixup_alpha=-1.0), dict(cutout=2.0)):
        with pytest.raises(UserError):
            AugmentConfig(**bad)
    assert not AugmentConfig().active and AugmentConfig.paper(mixup=True, low_res=False).mixup_alpha == 0.2


def test_uniform_streams_do_not_overlap():
    from fastkd.pipelines.view_policy import uniforms

    index = np.arange(50)
    full = uniforms(3, 2, index, 1015)
    np.testing.assert_array_equal(uniforms(3, 2, index, 5, offset=1010), full[:, 1010:])  # a stream is a stream
    np.testing.assert_array_equal(uniforms(3, 2, index, 41), full[:, :41])  # the crop/flip view is unchanged
    assert len(np.unique(full)) == full.size


def test_erasing_fill_is_fill_uniforms():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 16, 16, generator=g)
    box = torch.tensor([[0, 0, 16, 16], [3, 5, 4, 2], [0, 0, 0, 0], [10, 0, 6, 16]])
    key = torch.tensor([1, 2**40 + 3, 5, 2**53 - 1])
    expected = torch.where(box_mask(box, 16, 16), (fill_values(key, 3, 16, 16).float() - MEAN) / STD, x)
    assert torch.equal(apply_erasing(x, box, key, MEAN, STD), expected)


@pytest.mark.parametrize("cfg", [ALL, AugmentConfig(erasing_p=0.5), AugmentConfig(cutout=0.25),
                                 AugmentConfig(erasing_p=0.5, cutout=0.25)])
def test_augmenter_writes_into_its_input_only_when_allowed(cfg):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 3, RES, RES, generator=g)
    before = x.clone()
    run = Augmenter(cfg, 1, RES, MEAN, STD, 10)
    out, _, _ = run(x, torch.arange(16) % 10, np.arange(16), 0, 2)
    assert torch.equal(x, before) and not torch.equal(out, x)
    again, _, _ = run(x, torch.arange(16) % 10, np.arange(16), 0, 2, inplace=True)
    assert torch.equal(again, out)  # the same batch, written in place
