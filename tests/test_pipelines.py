"""Pipelines: every registered backend delivers the same samples, in the same order, with the same views.

Backends come from the registry (those whose package is installed). FFCV is only used through the session
fixture ``ffcv_train_loader`` (batch 32, res 32, seed 3): each new FFCV Loader costs ~15 s of numba
compilation. Its epochs are always consumed to the end, since other tests share it.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import sys
import weakref

import numpy as np
import pytest
import torch

from fastkd.converted import ShardReader
from fastkd.errors import UserError
from conftest import release_loader
from fastkd.pipelines import BACKENDS, ConvertedData, Loader, open_converted
from fastkd.pipelines.order import batches, epoch_order, num_batches
from fastkd.pipelines.torch_backend import base_image
from fastkd.pipelines.view_policy import apply_views

SETTINGS = dict(batch_size=32, res=32, seed=3, workers=2)
EPOCHS = (0, 1)
SESSION_LOADERS = {"ffcv": "ffcv_train_loader"}  # backends built once per session (conftest.py), with SETTINGS
PER_TEST = [name for name in BACKENDS.names() if name not in SESSION_LOADERS]  # cheap to build in a test


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _available(backend: str) -> bool:
    package = BACKENDS.get(backend).package
    return not package or _has(package)


def _require(backend: str) -> None:
    if not _available(backend):
        pytest.skip(f"backend {backend} needs {BACKENDS.get(backend).package}, which is not installed")


def _collect(loader: Loader, epoch: int) -> dict:
    images, labels, index, box, flip, sizes = [], [], [], [], [], []
    for b in loader.epoch(epoch):
        assert b.epoch == epoch
        images.append(b.images)
        labels.append(b.labels)
        index.append(b.index)
        box.append(b.view.box)
        flip.append(b.view.flip)
        sizes.append(len(b.labels))
    return {"images": torch.cat(images), "labels": torch.cat(labels), "index": torch.cat(index),
            "box": torch.cat(box), "flip": torch.cat(flip), "sizes": sizes, "dtype": images[0].dtype,
            "device": images[0].device}


@pytest.fixture(scope="module")
def train_loaders(request, orl_data):
    """{backend: train Loader with SETTINGS} for every registered backend whose package is installed."""
    loaders = {name: request.getfixturevalue(SESSION_LOADERS[name]) if name in SESSION_LOADERS
               else Loader(orl_data, "train", backend=name, **SETTINGS)
               for name in BACKENDS.names() if _available(name)}
    yield loaders
    for name, loader in loaders.items():
        if name not in SESSION_LOADERS:
            release_loader(loader)


@pytest.fixture(scope="module")
def torch_train(train_loaders):
    return train_loaders["torch"]


@pytest.fixture(scope="module")
def epochs(train_loaders):
    """{backend: {epoch: collected batches}} for every backend available, epochs 0 and 1."""
    return {name: {e: _collect(loader, e) for e in EPOCHS} for name, loader in train_loaders.items()}


def _grey_levels(data: ConvertedData) -> torch.Tensor:
    """Factor turning a difference of normalised images back into 0..255 grey levels."""
    return torch.tensor(data.std).view(1, 3, 1, 1) * 255


# ------------------------------------------------------------------------------------ order and coverage


def test_backends_yield_identical_order(epochs, orl_data):
    assert "torch" in epochs and len(epochs) >= 2, f"only {sorted(epochs)} available: nothing to compare"
    table = np.load(os.path.join(orl_data, "dali", "train", "samples.npy"))
    for e in EPOCHS:
        ref = epochs["torch"][e]
        expected = np.concatenate(batches(epoch_order(320, 3, e, shuffle=True), 32, True))
        np.testing.assert_array_equal(ref["index"].numpy(), expected)
        np.testing.assert_array_equal(ref["labels"].numpy(), table["label"][expected])
        for name in epochs:
            got = epochs[name][e]
            assert torch.equal(got["index"], ref["index"]), f"{name} epoch {e}: indices differ from torch"
            assert torch.equal(got["labels"], ref["labels"]), f"{name} epoch {e}: labels differ from torch"
            assert got["labels"].dtype == got["index"].dtype == torch.int64
            # the views are a function of (seed, epoch, index), hence identical too
            assert torch.equal(got["box"], ref["box"]) and torch.equal(got["flip"], ref["flip"]), name


def test_epochs_cover_each_index_once(epochs, torch_train):
    assert len(torch_train) == 10
    for name, per_epoch in epochs.items():
        for e in EPOCHS:
            got = per_epoch[e]
            assert got["sizes"] == [32] * 10, name  # 320 // 32 full batches
            index = got["index"].numpy()
            assert len(index) == 320 // 32 * 32 and len(np.unique(index)) == len(index), name
            assert index.min() >= 0 and index.max() < 320
        assert not torch.equal(per_epoch[0]["index"], per_epoch[1]["index"]), f"{name}: epochs share an order"
        # same index, new epoch -> a new view for most samples
        order0, order1 = per_epoch[0]["index"].argsort(), per_epoch[1]["index"].argsort()
        same = (per_epoch[0]["box"][order0] == per_epoch[1]["box"][order1]).all(1) & (
            per_epoch[0]["flip"][order0] == per_epoch[1]["flip"][order1])
        assert same.float().mean() < 0.1


def test_images_are_float_nchw(epochs):
    for name, per_epoch in epochs.items():
        got = per_epoch[0]
        assert got["dtype"] == torch.float32, name
        assert got["images"].shape == (320, 3, 32, 32), name
        assert got["device"].type == "cpu"
        assert torch.isfinite(got["images"]).all()


def test_pixels_agree_across_backends(epochs, orl_data):
    """The backends resize the 92x92 centre square to 32 with different filters (torch: PIL box, DALI:
    antialiased linear, FFCV: OpenCV area) and decode JPEG with different libraries. Measured on these
    augmented batches, in grey levels: mean abs difference 2.4 (torch/DALI), 1.8 (torch/FFCV), 1.4 (DALI/FFCV);
    99th percentile 16 / 12 / 8; max 67 / 52 / 27 (sharp edges). Bounds: mean < 4.5, 99th percentile < 25.
    A one-pixel shift of the same base images gives a mean of ~14, pairing with another sample ~32."""
    scale = _grey_levels(open_converted(orl_data))
    names = sorted(epochs)
    assert len(names) >= 2
    for e in EPOCHS:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                diff = ((epochs[a][e]["images"] - epochs[b][e]["images"]) * scale).abs()
                assert diff.mean() < 4.5, (a, b, e, diff.mean())
                assert diff.flatten().quantile(0.99) < 25, (a, b, e)
        # the bound is meaningful: the same images, each paired with another sample, are far apart
        x = epochs[names[0]][e]["images"]
        assert ((x - x.roll(1, 0)) * scale).abs().mean() > 10


def test_loader_applies_the_view_of_each_index(epochs, orl_data, torch_train):
    """Batch images = normalise(apply_views(base image of that index, its view)), exactly."""
    data = open_converted(orl_data)
    info = data.split("train")
    reader = ShardReader(data.path("dali/train"), [s.rsplit("/", 1)[1] for s in info["dali"]["shards"]])
    got = epochs["torch"][1]
    sel = slice(40, 72)
    idx = got["index"][sel].numpy()
    base = torch.from_numpy(np.stack([base_image(reader.payload(int(i)), 32) for i in idx])).permute(0, 3, 1, 2)
    view = torch_train.policy.sample(3, 1, idx)
    x = apply_views(base.float(), torch.from_numpy(view["box"]).float(), torch.from_numpy(view["flip"]), 32)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1) * 255
    x = (x - mean) / _grey_levels(data)
    torch.testing.assert_close(got["images"][sel], x, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["box"][sel].numpy(), view["box"])
    # and the augmentation is real: some samples flipped, some shifted
    assert 0 < view["flip"].sum() < len(idx) and np.abs(view["box"][:, :2]).sum() > 0


def test_views_do_not_depend_on_batch_composition(epochs, orl_data, make_loader):
    other = make_loader(orl_data, "train", backend="torch", batch_size=20, res=32, seed=3, workers=0)
    got = _collect(other, 1)
    ref = epochs["torch"][1]
    assert got["sizes"] == [20] * 16
    assert torch.equal(got["index"], ref["index"])
    assert torch.equal(got["images"], ref["images"])


@pytest.mark.parametrize("backend", PER_TEST)
def test_drop_last_and_order_with_uneven_batches(orl_data, backend, make_loader):
    _require(backend)
    loader = make_loader(orl_data, "train", backend=backend, batch_size=48, res=32, seed=5, workers=1)
    assert len(loader) == 320 // 48 == 6
    got = _collect(loader, 2)
    assert got["sizes"] == [48] * 6
    expected = epoch_order(320, 5, 2, shuffle=True)[: 6 * 48]
    np.testing.assert_array_equal(got["index"].numpy(), expected)
    assert len(np.unique(expected)) == 288


def test_abandoned_epoch_does_not_leak_into_the_next(epochs, train_loaders):
    for name, loader in train_loaders.items():
        if name in SESSION_LOADERS:  # shared with other tests: always consumed to the end
            continue
        it = loader.epoch(0)
        for _ in range(2):
            next(it)
        del it  # abandoned part-way
        again = _collect(loader, 1)
        assert torch.equal(again["index"], epochs[name][1]["index"]), name
        assert torch.equal(again["images"], epochs[name][1]["images"]), name


# ----------------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize("backend", PER_TEST)
def test_eval_loader_is_sequential_and_unaugmented(orl_data, backend, make_loader):
    _require(backend)
    data = open_converted(orl_data)
    loader = make_loader(data, "test", backend=backend, batch_size=32, res=32, seed=3, workers=2, train=False)
    assert len(loader) == 3
    first, second = _collect(loader, 0), _collect(loader, 4)
    assert first["sizes"] == [32, 32, 16]  # no drop_last: all 80
    np.testing.assert_array_equal(first["index"].numpy(), np.arange(80))
    table = np.load(data.path("dali/test/samples.npy"))
    np.testing.assert_array_equal(first["labels"].numpy(), table["label"])
    assert torch.equal(first["index"], second["index"])
    assert torch.equal(first["images"], second["images"])  # another epoch, the very same images
    assert not first["flip"].any()
    np.testing.assert_array_equal(first["box"].numpy(), np.tile([0, 0, 32, 32], (80, 1)))
    if backend == "torch":  # exactly the normalised base images
        reader = ShardReader(data.path("dali/test"), ["shard-00000.tar"])
        base = torch.from_numpy(np.stack([base_image(reader.payload(i), 32) for i in range(80)]))
        x = (base.permute(0, 3, 1, 2).float() - torch.tensor(data.mean).view(1, 3, 1, 1) * 255) / _grey_levels(data)
        torch.testing.assert_close(first["images"], x, rtol=0, atol=1e-5)


def test_loader_is_freed_by_reference_counting(orl_data):
    loader = Loader(orl_data, "test", backend="torch", batch_size=16, res=32, workers=0)
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        alive = ref() is not None
    finally:
        gc.enable()
    assert not alive


# ------------------------------------------------------------------------------------------ epoch order


def test_epoch_order_is_pure_and_shards_by_rank():
    a = epoch_order(103, 9, 4, shuffle=True)
    np.testing.assert_array_equal(a, epoch_order(103, 9, 4, shuffle=True))
    assert sorted(a.tolist()) == list(range(103)) and a.dtype == np.int64
    assert not np.array_equal(a, epoch_order(103, 9, 5, shuffle=True))
    assert not np.array_equal(a, epoch_order(103, 10, 4, shuffle=True))
    np.testing.assert_array_equal(epoch_order(103, 9, 4, shuffle=False), np.arange(103))
    # 4 ranks of batch 8: blocks of 8 of the one-process order, dealt in rank order per global batch of 32
    parts = [epoch_order(103, 9, 4, shuffle=True, rank=r, world=4, batch_size=8) for r in range(4)]
    assert [len(p) for p in parts] == [31, 24, 24, 24]  # the partial last global batch (7): rank 0, no padding
    per_rank = [batches(p, 8, False) for p in parts]
    merged = np.concatenate([b[k] for k in range(4) for b in per_rank if k < len(b)])
    np.testing.assert_array_equal(merged, a)
    kept = [epoch_order(103, 9, 4, shuffle=True, rank=r, world=4, batch_size=8, drop_last=True) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate([k.reshape(3, 8) for k in kept], 1), a[:96].reshape(3, 32))
    assert num_batches(26, 8, True) == 3 and num_batches(26, 8, False) == 4
    assert [len(b) for b in batches(np.arange(26), 8, False)] == [8, 8, 8, 2]


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", [name for name, cls in BACKENDS.items() if cls.package])
def test_missing_backend_package_names_the_extra(orl_data, monkeypatch, backend):
    package, extra = BACKENDS.get(backend).package, BACKENDS.get(backend).extra
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(UserError) as info:
        Loader(orl_data, "train", backend=backend, batch_size=8, res=32)
    assert f"fastkd[{extra}]" in str(info.value) and package in str(info.value)


def test_format_missing_from_the_conversion(orl_data):
    pytest.importorskip("ffcv")
    data = open_converted(orl_data)
    manifest = copy.deepcopy(data.manifest)
    manifest["options"]["formats"] = ["dali"]
    with pytest.raises(UserError, match="--formats ffcv"):
        Loader(ConvertedData(data.root, manifest), "train", backend="ffcv", batch_size=8, res=32)


def test_unknown_backend_and_split(orl_data):
    with pytest.raises(UserError) as info:
        Loader(orl_data, "train", backend="tensorflow", batch_size=8, res=32)
    assert "tensorflow" in str(info.value) and all(name in str(info.value) for name in BACKENDS.names())
    with pytest.raises(UserError) as info:
        Loader(orl_data, "validation", backend="torch", batch_size=8, res=32)
    assert "validation" in str(info.value) and "train, test" in str(info.value)
    with pytest.raises(UserError):
        open_converted(orl_data).split("val")


def test_open_converted_rejects_other_folders(tmp_path, orl_data):
    with pytest.raises(UserError, match="does not exist"):
        open_converted(str(tmp_path / "nowhere"))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "images.txt").write_text("not a conversion")
    with pytest.raises(UserError, match="not a fastkd conversion"):
        open_converted(str(plain))
    (plain / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        open_converted(str(plain))
    (plain / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not a fastkd manifest"):
        open_converted(str(plain))
    # a real manifest whose listed files are gone
    manifest = json.loads(open(os.path.join(orl_data, "manifest.json")).read())
    (plain / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="incomplete"):
        open_converted(str(plain))
    data = open_converted(orl_data)
    assert data.splits() == ["train", "test"] and data.num_classes == 40 and data.storage == "jpg"


def test_ffcv_leaves_the_torch_thread_count_alone(ffcv_train_loader):
    """FFCV calls torch.set_num_threads on import and per epoch; a seeded run's numbers depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not the loader's worker count (2), which FFCV would set
    try:
        for _ in ffcv_train_loader.epoch(5):
            pass
        type(ffcv_train_loader.backend).require("ffcv", ffcv_train_loader.backend.cfg)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
