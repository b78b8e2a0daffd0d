"""``--views-per-image K`` (issue 23): each photo decoded once per epoch and cut into K views, each a pure function
of (seed, epoch, index, k); batches of whole photos; an epoch is one pass over the photos; every backend cuts the
same views; the teacher cache addresses rows (epoch, index * K + k) and replays a K = 4 run bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastkd.errors import UserError
from fastkd.pipelines.order import epoch_order
from fastkd.pipelines.view_policy import VIEW_STRIDE
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import Trainer
from run_tools import fit
from test_hires_views import BACKENDS, _backend, _reader, _reference, photos  # noqa: F401  (photos: a fixture)

K = 4


def _grey(loader, batch) -> np.ndarray:
    """The batch's views un-normalised and unflipped, (N, H, W, 3) grey levels."""
    got = batch.images * loader._std / 255 + loader._mean / 255
    return torch.where(batch.view.flip[:, None, None, None], got.flip(3), got).permute(0, 2, 3, 1).numpy() * 255


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_cuts_each_photos_k_views(photos, make_loader, monkeypatch, backend):  # noqa: F811
    """RandomResizedCrop views of K = 4: whole photos per batch, view k of a photo is its own box, each view is the
    float reference of its box (the same bound as one view per image), view 0 is the photo's view of K = 1."""
    name = _backend(backend, monkeypatch)
    loader = make_loader(photos, "train", backend=name, batch_size=8, res=96, seed=4, workers=1, views_per_image=K)
    one = make_loader(photos, "train", backend="torch", batch_size=8, res=96, seed=4, workers=0)
    assert len(loader) == K * len(one)  # an epoch: every photo, K views each
    batch = next(iter(loader.epoch(2)))
    idx = batch.index.numpy()
    assert (idx == np.repeat(idx[::K], K)).all() and len(set(idx[::K])) == 2
    assert batch.rows.tolist() == [int(i) * K + k % K for k, i in enumerate(idx)]
    view = loader.views_of(2, idx, np.arange(len(idx)) % K)  # the replay a teacher cache relies on
    np.testing.assert_array_equal(view["box"].astype(np.float32), batch.view.box.numpy())
    np.testing.assert_array_equal(view["flip"], batch.view.flip.numpy())
    assert len({tuple(b) for b in batch.view.box.tolist()}) == len(idx)  # K different views of each photo
    first = one.views_of(2, idx[::K])["box"].astype(np.float32)
    np.testing.assert_array_equal(first, batch.view.box.numpy()[::K])
    reader, got = _reader(photos), _grey(loader, batch)
    for k, i in enumerate(idx.tolist()):
        err = np.abs(got[k] - _reference(reader.payload(i), batch.view.box[k].tolist(), 96, True))
        assert err.mean() < 3.5 and np.percentile(err, 99) < 28, (backend, i, k, err.mean(), np.percentile(err, 99))


def test_the_torch_backend_decodes_each_photo_once_per_epoch(photos, make_loader, monkeypatch):  # noqa: F811
    from fastkd.pipelines import jpeg_window, photo_views

    calls = []
    real = jpeg_window.decode_window

    def counted(data, *args):
        calls.append(hash(data))
        return real(data, *args)

    monkeypatch.setattr(photo_views.jpeg_window, "decode_window", counted)
    loader = make_loader(photos, "train", backend="torch", batch_size=8, res=96, seed=4, workers=0, views_per_image=K)
    seen = [b.index for b in loader.epoch(0)]
    photos_seen = len(torch.cat(seen)) // K
    assert photos_seen == 16 and len(calls) == photos_seen and len(set(calls)) == photos_seen


def test_dali_is_fed_each_photo_once_for_its_k_views(photos, make_loader, monkeypatch):  # noqa: F811
    pytest.importorskip("nvidia.dali")
    from fastkd.pipelines import dali_backend

    fed, real = [], dali_backend._Feeder.__call__

    def counted(self, info):
        out = real(self, info)
        fed.append((len(out[0]), len(out) - 5))  # encoded photos; cut outputs (start, end, flip per view)
        return out

    monkeypatch.setattr(dali_backend._Feeder, "__call__", counted)
    loader = make_loader(photos, "train", backend="dali", batch_size=8, res=96, seed=4, workers=1, views_per_image=K)
    assert "one decode per photo" in loader.backend.decode_path
    seen = sum(len(b.index) for b in loader.epoch(0))
    assert seen == 16 * K and sum(n for n, _ in fed) == 16 and {c for _, c in fed} == {3 * K}


def test_ffcv_decodes_one_window_per_photo_for_its_k_views():
    """FFCV's decoder rows (ffcv_decoder.window): the K views of a photo share one MCU-aligned window covering all
    their boxes, at the smallest of their DCT scales, decoded by the photo's first row; each view keeps its own box
    in that window's pixels. One view per image keeps its own window (as before K existed)."""
    from fastkd.pipelines.decode import dct_scale
    from fastkd.pipelines.ffcv_decoder import MCU, window

    rng = np.random.default_rng(0)
    n, out = 3 * K, 64
    sizes = np.repeat(rng.integers(300, 700, size=(n // K, 2)), K, 0)
    side = rng.uniform(70, 280, size=n)
    boxes = np.stack([rng.uniform(0, sizes[:, 0] - side), rng.uniform(0, sizes[:, 1] - side), side, side,
                      rng.integers(0, 2, n)], 1)
    rows = window(boxes, sizes, out, views_per_image=K)
    for p in range(n // K):
        mine, b = rows[p * K : (p + 1) * K], boxes[p * K : (p + 1) * K]
        assert (mine[:, 10] == p * K).all() and mine[0, 11] == K  # decoded once, by the photo's first row
        wx, wy, ww, wh, s = mine[0, :5]
        assert (mine[:, :5] == mine[0, :5]).all() and s == dct_scale(b, out).min() > 0
        assert wx % MCU == 0 and wy % MCU == 0 and wx <= b[:, 0].min() and wy <= b[:, 1].min()
        assert wx + ww >= np.ceil(b[:, 0] + b[:, 2]).max() and wy + wh >= np.ceil(b[:, 1] + b[:, 3]).max()
        # each view's box, in the window's pixels at scale 1/s
        np.testing.assert_allclose(mine[:, 5], np.round((b[:, 1] - wy) / s))
        np.testing.assert_allclose(mine[:, 7], np.round((b[:, 0] - wx) / s))
        assert (mine[:, 9] == b[:, 4]).all()
    one = window(boxes, sizes, out)
    assert (one[:, 10] == np.arange(n)).all() and (one[:, 11] == 1).all()
    assert (one[:, 4] == dct_scale(boxes, out)).all() and (one[:, 0] == np.floor(boxes[:, 0] / MCU) * MCU).all()


@pytest.mark.parametrize("backend", ["torch", "memory", "dali", "ffcv"])
def test_low_resolution_k_views_agree_across_backends(orl_data, make_loader, backend):
    """Pad-and-crop (32 px): K views of each base square; the memory backend's views are the torch backend's exactly
    (both cut the same base squares with integer offsets); DALI and FFCV decode with other filters (the bounds of
    test_pipelines' cross-backend test)."""
    if backend in ("dali", "ffcv"):
        pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend])
    ref = make_loader(orl_data, "train", backend="torch", batch_size=16, res=32, seed=1, workers=0, views_per_image=K)
    got = make_loader(orl_data, "train", backend=backend, batch_size=16, res=32, seed=1, workers=1, views_per_image=K)
    a, b = next(iter(ref.epoch(1))), next(iter(got.epoch(1)))
    assert torch.equal(a.index, b.index) and torch.equal(a.rows, b.rows) and torch.equal(a.view.box, b.view.box)
    offsets = {tuple(v) for v in a.view.box[:K, :2].tolist()} | {tuple(a.view.flip[:K].tolist())}
    assert len(offsets) > 1  # the views of one photo differ
    diff = (a.images - b.images).abs() * 255 * 0.25  # about grey levels
    if backend == "memory":
        assert torch.equal(a.images, b.images)
    else:
        assert diff.mean() < 4.5 and diff.flatten().quantile(0.99) < 25, (backend, float(diff.mean()))


def test_an_epoch_visits_every_view_once_and_ranks_get_whole_photos():
    n = 10
    one = epoch_order(n, 3, 2, True)
    views = epoch_order(n, 3, 2, True, views_per_image=K)
    assert (views == np.repeat(one, K)).all()  # the same photo order, each photo K times in a row
    ranks = [epoch_order(n, 3, 2, True, rank=r, world=2, batch_size=8, drop_last=True, views_per_image=K)
             for r in range(2)]
    for order in ranks:
        assert len(order) % 8 == 0 and all(len(set(order[i : i + K])) == 1 for i in range(0, len(order), K))
    # two ranks of batch 8 read the global batches of one process with batch 16, rank blocks in turn
    single = epoch_order(n, 3, 2, True, batch_size=16, drop_last=True, views_per_image=K)[:32]
    np.testing.assert_array_equal(np.concatenate([ranks[0][:8], ranks[1][:8], ranks[0][8:16], ranks[1][8:16]]), single)


def test_mixing_pairs_photos_view_by_view_and_erasing_draws_per_view(orl_data, make_loader):
    from fastkd.pipelines.augment import AugmentConfig

    aug = AugmentConfig(mixup_alpha=1.0, erasing_p=1.0)
    loader = make_loader(orl_data, "train", backend="memory", batch_size=16, res=32, seed=1, workers=0,
                         augment=aug, views_per_image=K)
    batch = next(iter(loader.epoch(0)))
    idx, k = batch.index.numpy(), np.arange(16) % K
    keys = idx + k * VIEW_STRIDE
    partner = batch.view.mix_partner.cpu().numpy()
    expected = keys.reshape(-1, 2, K)[:, ::-1].reshape(-1)  # photo 2j with 2j+1, view k with view k
    np.testing.assert_array_equal(partner, expected)
    erase = batch.view.erase_box.cpu().numpy()
    assert len({tuple(erase[i]) for i in range(K)}) > 1  # a photo's views are erased independently


def test_bad_views_per_image_are_one_line_errors(orl_data):
    from fastkd.pipelines import Loader
    from fastkd.pipelines.augment import AugmentConfig

    with pytest.raises(UserError, match="multiple of --views-per-image 4"):
        TrainConfig(data=orl_data, out="x", student="resnet32", batch_size=10, views_per_image=4)
    with pytest.raises(UserError, match="must be an integer >= 1"):
        TrainConfig(data=orl_data, out="x", student="resnet32", views_per_image=0)
    with pytest.raises(UserError, match="for a training split only"):
        Loader(orl_data, "test", train=False, batch_size=8, res=32, workers=0, views_per_image=2)
    with pytest.raises(UserError, match="an even number of photos per batch"):
        Loader(orl_data, "train", batch_size=12, res=32, workers=0, views_per_image=4,
               augment=AugmentConfig(mixup_alpha=1.0))


def test_a_k_view_cache_replays_the_run_bit_for_bit(orl_data, teacher_weights, tmp_path):
    cfg = dict(data=orl_data, student="resnet32", teacher="resnet32", teacher_weights=teacher_weights, epochs=1,
               batch_size=64, lr=0.05, res=16, workers=0, progress=False, device="cpu", method="kd", views_per_image=K)
    cache = dict(teacher_cache=str(tmp_path / "cache"), cache_dtype="float32")
    online = fit(TrainConfig(out=str(tmp_path / "online"), **cfg))
    filling = fit(TrainConfig(out=str(tmp_path / "fill"), **cfg, **cache))
    trainer = Trainer(TrainConfig(out=str(tmp_path / "read"), **cfg, **cache))
    assert trainer.teacher_source.mode == "cached" and trainer.teacher_source.cache.meta["key"]["views_per_image"] == K
    assert trainer.teacher_source.cache.meta["key"]["count"] == trainer.train_loader.count * K
    trainer.fit()
    trainer.close()
    read = checkpoint.load(tmp_path / "read" / "checkpoint.pt")["model"]
    assert (online[0], filling[0]) == ("online", "filling")
    for weights in (filling[1], read):
        assert all(torch.equal(online[1][n], weights[n]) for n in online[1])
    with pytest.raises(UserError, match="views_per_image"):  # a run of one view per image cannot read it
        Trainer(TrainConfig(out=str(tmp_path / "other"), **{**cfg, "views_per_image": 1}, **cache))
