"""Memory backend: the whole split decoded once into one uint8 tensor; batches are cut from it on the device.

It must deliver exactly what the torch backend delivers (same decode path): the same indices, labels and
pixels, bit for bit, in every epoch.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fastkd.converted import ShardReader
from fastkd.errors import UserError
from conftest import release_loader
from fastkd.pipelines import BACKENDS, ConvertedData, Loader, open_converted, view_policy
from fastkd.pipelines.memory_backend import ENV_LIMIT, MemoryBackend, parse_bytes
from fastkd.pipelines.order import batches, epoch_order
from fastkd.pipelines.torch_backend import base_image

SETTINGS = dict(batch_size=32, res=32, seed=3, workers=2)
EPOCHS = (0, 1)


@pytest.fixture(scope="module")
def pair(orl_data):
    """(memory, torch) train Loaders with the same settings."""
    memory = Loader(orl_data, "train", backend="memory", **SETTINGS)
    ref = Loader(orl_data, "train", backend="torch", **SETTINGS)
    yield memory, ref
    release_loader(memory)
    release_loader(ref)


def _raw(loader: Loader, epoch: int):
    """The backend's own (uint8 images, labels, index) of an epoch, concatenated, with the batch sizes."""
    parts = list(loader.backend.iter_epoch(epoch))
    return [torch.cat([p[k] for p in parts]) for k in range(3)] + [[len(p[2]) for p in parts]]


def test_registered_and_needs_no_decoder_package():
    assert "memory" in BACKENDS and BACKENDS.get("memory") is MemoryBackend
    assert MemoryBackend.package == ""


def test_same_indices_labels_and_pixels_as_the_torch_backend(pair, orl_data):
    memory, ref = pair
    assert isinstance(memory.backend, MemoryBackend)
    held = memory.backend.images
    assert held.dtype == torch.uint8 and held.shape == (320, 32, 32, 3)
    # held channels-first in its 4 px zero padding, with a mirrored copy (room for it on this machine)
    assert memory.backend.pad == 4 and memory.backend.nbytes == 2 * 320 * 3 * 40 * 40 and memory.backend.decode_s > 0
    table = np.load(open_converted(orl_data).path("dali/train/samples.npy"))
    for e in EPOCHS:
        images, labels, index, sizes = _raw(memory, e)
        r_images, r_labels, r_index, r_sizes = _raw(ref, e)
        expected = np.concatenate(batches(epoch_order(320, 3, e, shuffle=True), 32, True))
        np.testing.assert_array_equal(index.numpy(), expected)
        np.testing.assert_array_equal(labels.numpy(), table["label"][expected])
        assert sizes == r_sizes == [32] * 10
        assert images.dtype == torch.uint8 and images.shape == (320, 32, 32, 3)
        assert labels.dtype == index.dtype == torch.int64
        assert torch.equal(index, r_index) and torch.equal(labels, r_labels)
        assert torch.equal(images, r_images), f"epoch {e}: base pixels differ from the torch backend"
        # and through the Loader (views + normalisation): the very same batches
        for a, b in zip(memory.epoch(e), ref.epoch(e), strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.index, b.index)
            assert torch.equal(a.view.box, b.view.box) and torch.equal(a.view.flip, b.view.flip)
            assert a.images.dtype == torch.float32 and a.images.shape == (32, 3, 32, 32)
    assert not torch.equal(_raw(memory, 0)[2], _raw(memory, 1)[2])  # a new order each epoch


@pytest.mark.parametrize("mirror", [True, False])
def test_crop_is_exactly_pad_crop_flip(orl_data, make_loader, monkeypatch, mirror):
    """The backend's single gather == view_policy.pad_crop_flip of its base images, at every offset and flip,
    with the mirrored copy and without it (a limit with room for one copy only)."""
    if not mirror:
        monkeypatch.setattr(MemoryBackend, "limit_bytes", 320 * 3 * 40 * 40 + 1)
    loader = make_loader(orl_data, "train", backend="memory", batch_size=32, res=32, seed=1, workers=0)
    backend = loader.backend
    assert (backend._mirror_windows is not None) == mirror
    assert backend.nbytes == (2 if mirror else 1) * 320 * 3 * 40 * 40
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 320, (200,), generator=g)
    offset = torch.randint(-4, 5, (200, 2), generator=g)
    offset[:4] = torch.tensor([[-4, -4], [4, 4], [-4, 4], [4, -4]])  # the corners: zero fill on two sides
    flip = torch.rand(200, generator=g) < 0.5
    got = backend.crop(index, offset, flip)
    assert got.dtype == torch.uint8 and got.shape == (200, 3, 32, 32) and got.is_contiguous()
    box = torch.cat([offset.float(), torch.full((200, 2), 32.0)], 1)
    want = view_policy.pad_crop_flip(backend.images[index], box, flip, 4)
    assert torch.equal(got.float(), want)
    assert (got[0, :, :4, :4] == 0).all() and (got[1, :, -4:, -4:] == 0).all()
    # and whole epochs through the Loader: the same batches as the generic path (index_select + pad_crop_flip)
    generic = copy.copy(loader)
    generic.backend = copy.copy(backend)
    generic.backend.pad = 0  # the Loader then takes iter_epoch's uint8 batches
    for a, b in zip(loader.epoch(3), generic.epoch(3), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)


def test_decode_does_not_depend_on_workers(pair, orl_data, make_loader):
    serial = make_loader(orl_data, "train", backend="memory", batch_size=32, res=32, seed=3, workers=0)
    assert torch.equal(serial.backend.images, pair[0].backend.images)
    assert torch.equal(serial.backend.labels, pair[0].backend.labels)


def test_drop_last_uneven_batches_and_ranks(orl_data, make_loader):
    loader = make_loader(orl_data, "train", backend="memory", batch_size=48, res=32, seed=5, workers=0)
    assert len(loader) == len(loader.backend) == 6
    images, labels, index, sizes = _raw(loader, 2)
    assert sizes == [48] * 6
    np.testing.assert_array_equal(index.numpy(), epoch_order(320, 5, 2, shuffle=True)[:288])
    assert torch.equal(images, loader.backend.images[index])
    keep = make_loader(orl_data, "train", backend="memory", batch_size=48, res=32, seed=5, workers=0, drop_last=False)
    assert len(keep) == 7 and _raw(keep, 2)[3] == [48] * 6 + [32]
    # rank 1 of 3: the second block of 50 of each global batch of 150; the last 20 samples go to rank 0
    ranked = make_loader(orl_data, "train", backend="memory", batch_size=50, res=32, seed=5, workers=0,
                         rank=1, world=3, drop_last=False)
    expected = epoch_order(320, 5, 0, shuffle=True)
    expected = np.concatenate([expected[50:100], expected[200:250]])
    got = _raw(ranked, 0)
    assert got[3] == [50, 50]
    np.testing.assert_array_equal(got[2].numpy(), expected)


def test_eval_is_sequential_unaugmented_and_exact(orl_data, make_loader):
    data = open_converted(orl_data)
    loader = make_loader(data, "test", backend="memory", batch_size=32, res=32, seed=3, workers=1, train=False)
    assert len(loader) == 3
    out = list(loader.epoch(0))
    assert [len(b.labels) for b in out] == [32, 32, 16]  # no drop_last: all 80
    index, labels = torch.cat([b.index for b in out]), torch.cat([b.labels for b in out])
    np.testing.assert_array_equal(index.numpy(), np.arange(80))
    table = np.load(data.path("dali/test/samples.npy"))
    np.testing.assert_array_equal(labels.numpy(), table["label"])
    again = torch.cat([b.images for b in loader.epoch(4)])
    images = torch.cat([b.images for b in out])
    assert torch.equal(images, again)
    reader = ShardReader(data.path("dali/test"), ["shard-00000.tar"])
    base = torch.from_numpy(np.stack([base_image(reader.payload(i), 32) for i in range(80)]))
    assert torch.equal(loader.backend.images, base)  # exactly the torch backend's base images
    mean = torch.tensor(data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.std).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(images, (base.permute(0, 3, 1, 2).float() - mean) / std, rtol=0, atol=1e-5)


def test_rgb_at_another_base_size(orl_data, make_loader):
    """res 96 -> RRC policy, base 110: the photos are held whole (ORL's 92 x 112 is under the cap), as decoded."""
    from fastkd.converters.images import decode_bytes

    data = open_converted(orl_data)
    loader = make_loader(data, "test", backend="memory", batch_size=40, res=96, workers=0, train=False)
    held = loader.backend.held
    assert held.nbytes == 80 * 112 * 92 * 3 and tuple(held.shapes[0]) == (112, 92)
    reader = ShardReader(data.path("dali/test"), ["shard-00000.tar"])
    for i in (0, 41, 79):
        image = held.flat[held.offsets[i] : held.offsets[i + 1]].view(112, 92, 3)
        assert torch.equal(image, torch.from_numpy(decode_bytes(reader.payload(i))))
    assert next(iter(loader.epoch(0))).images.shape == (40, 3, 96, 96)


def test_memory_limit_refuses_with_the_size_and_the_fix(orl_data, monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "512K")  # the split needs 320 * 3 * 40 * 40 = 1.5 MiB padded
    with pytest.raises(UserError) as info:
        Loader(orl_data, "train", backend="memory", batch_size=32, res=32, workers=0)
    msg = str(info.value)
    for part in ("320 train images", "32x32x3", "zero-padded to 40x40", "1.5 MiB", "512.0 KiB", ENV_LIMIT,
                 "--backend torch", "--res", "--memory-limit 2G"):
        assert part in msg, (part, msg)
    monkeypatch.setenv(ENV_LIMIT, "1M")  # the 80 test images need 375 KiB (750 KiB with the mirror)
    Loader(orl_data, "test", backend="memory", batch_size=32, res=32, workers=0)  # fits
    monkeypatch.delenv(ENV_LIMIT)
    monkeypatch.setattr(MemoryBackend, "limit_bytes", 1000)
    with pytest.raises(UserError, match="MemoryBackend.limit_bytes"):
        Loader(orl_data, "test", backend="memory", batch_size=32, res=32, workers=0)


def test_parse_bytes():
    assert parse_bytes("8G") == 8 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("1.5k") == 1536
    assert parse_bytes("123") == 123 and parse_bytes("2TB") == 2 << 40
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(UserError, match=ENV_LIMIT):
            parse_bytes(bad)


def test_needs_the_shards(orl_data):
    data = open_converted(orl_data)
    manifest = copy.deepcopy(data.manifest)
    manifest["options"]["formats"] = ["ffcv"]
    with pytest.raises(UserError, match="--formats dali"):
        Loader(ConvertedData(data.root, manifest), "train", backend="memory", batch_size=8, res=32)


def test_bench_augment_smoke(tmp_path):
    """benchmarks/bench_augment.py end to end on a tiny synthetic set: all rows run, JSON written atomically."""
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_augment.py")
    spec = importlib.util.spec_from_file_location("bench_augment", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import inspect

    out = tmp_path / "res" / "augment.json"
    erasing = "augment" in inspect.signature(Loader).parameters  # the batch augmentation, where it exists
    assert bench.main(["--images", "64", "--batch-size", "16", "--workers", "0", "--epochs", "1",
                       "--warmup-epochs", "0", "--out", str(out), "--quiet"]
                      + (["--augment", "erasing"] if erasing else [])) == 0
    saved = json.loads(out.read_text())
    assert not list(out.parent.glob("*.tmp"))
    rows = saved["rows"]
    assert set(rows) == {"dataloader", "memory", "torch", "memory_no_views"}
    for row in rows.values():
        assert row["status"] == "ok" and row["images"] == 64 and row["images_per_s"] > 0, row
    assert saved["memory_vs_dataloader"] == pytest.approx(rows["memory"]["ratio"])
    assert saved["settings"]["res"] == 32 and saved["settings"]["stored_square"] and saved["settings"]["synthetic"]
    assert "RandomCrop(size=(32, 32), padding=4)" in saved["settings"]["baseline_transforms"]
    assert saved["machine"]["cpu_count"] >= 1 and "gpu_available" in saved["machine"]
    assert saved["settings"]["baseline_random_erasing"] == erasing
    assert ("RandomErasing(p=0.5" in saved["settings"]["baseline_transforms"]) == erasing
