"""Converters: ORL layout -> shards (+ DALI index), FFCV betons and manifest.

Most tests run on a synthetic ORL tree (40 people x 10 distinct 92x112 grey PGMs, written with PIL in a
temporary folder) so decoded pixels can be compared with known sources. The DALI-reader test uses the
session conversion of the real ORL faces (``orl_data``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from fastkd.converters.convert import convert
from fastkd.converters.images import decode_bytes
from fastkd.converted import checksum_tree
from fastkd.converted import ShardReader
from fastkd.errors import UserError
from fastkd.pipelines import open_converted

from synthetic_orl import H, SPLIT_KEYS, W
from synthetic_orl import convert_opts as _opts


@pytest.fixture
def orl_copy(fake_orl, tmp_path):
    """A private copy of the synthetic tree, for tests that damage it."""
    dst = tmp_path / "ORL_copy"
    shutil.copytree(fake_orl[0], dst)
    return dst


@pytest.fixture(scope="module")
def raw_conversion(fake_orl, tmp_path_factory):
    """Lossless (raw) conversion in both formats, 100 samples per shard (train spans 4 shards)."""
    out = tmp_path_factory.mktemp("raw") / "data"
    manifest = convert("orl_faces", fake_orl[0], str(out), _opts(storage="raw", per_shard=100, formats=("ffcv", "dali")))
    return str(out), manifest


def _reader(out: str, manifest: dict, split: str) -> ShardReader:
    names = [s.rsplit("/", 1)[1] for s in manifest["splits"][split]["dali"]["shards"]]
    return ShardReader(os.path.join(out, "dali", split), names)


def _beton_payloads(path: str):
    """(metadata, [bytes of each sample's image]) of a beton, read without FFCV's (slow-to-compile) Loader."""
    from ffcv.reader import Reader

    r = Reader(path)
    data = np.fromfile(path, dtype=np.uint8)
    sizes = {int(row["ptr"]): int(row["size"]) for row in r.alloc_table}
    images = r.metadata["f0"]
    out = []
    for meta in images:
        ptr = int(meta["data_ptr"])
        out.append(data[ptr : ptr + sizes[ptr]].tobytes())
    return r, out


# ----------------------------------------------------------------------------------------- round trip


def test_raw_round_trip_is_lossless(fake_orl, raw_conversion):
    root, pixels = fake_orl
    out, manifest = raw_conversion
    assert manifest["image"]["storage"] == "raw"
    assert manifest["classes"] == [f"s{p}" for p in range(1, 41)]
    assert manifest["num_classes"] == 40
    assert manifest["source_root"] == os.path.abspath(root)
    for split, keys in SPLIT_KEYS.items():
        info = manifest["splits"][split]
        assert info["count"] == len(keys) == {"train": 320, "test": 80}[split]
        assert info["skipped_corrupt"] == []
        assert info["fixed_size"] == [H, W]
        assert info["label_counts"] == [len(keys) // 40] * 40
        reader = _reader(out, manifest, split)
        assert len(reader.shard_names) == {"train": 4, "test": 1}[split]  # per_shard=100
        assert len(reader) == len(keys)
        np.testing.assert_array_equal(reader.table["label"], [p - 1 for p, _ in keys])
        np.testing.assert_array_equal(reader.table["height"], H)
        np.testing.assert_array_equal(reader.table["width"], W)
        for i, key in enumerate(keys):
            payload = reader.payload(i)
            assert payload[:8] == b"\x89PNG\r\n\x1a\n"  # raw storage: PNG in the shards
            rgb = decode_bytes(payload)
            expected = np.repeat(pixels[key][:, :, None], 3, axis=2)  # grey replicated to RGB
            np.testing.assert_array_equal(rgb, expected, err_msg=f"{split}[{i}] = s{key[0]}/{key[1]}.pgm")


def test_raw_beton_holds_the_source_pixels(fake_orl, raw_conversion):
    pytest.importorskip("ffcv")
    _, pixels = fake_orl
    out, manifest = raw_conversion
    for split, keys in SPLIT_KEYS.items():
        assert manifest["splits"][split]["ffcv"] == f"ffcv/{split}.beton"
        r, payloads = _beton_payloads(os.path.join(out, "ffcv", f"{split}.beton"))
        assert r.num_samples == len(keys)
        assert r.field_names == ["image", "label", "index"]
        np.testing.assert_array_equal(r.metadata["f1"], [p - 1 for p, _ in keys])  # label
        np.testing.assert_array_equal(r.metadata["f2"], np.arange(len(keys)))  # index
        np.testing.assert_array_equal(r.metadata["f0"]["mode"], 1)  # FFCV's IMAGE_MODES["raw"]
        np.testing.assert_array_equal(r.metadata["f0"]["height"], H)
        np.testing.assert_array_equal(r.metadata["f0"]["width"], W)
        for i, key in enumerate(keys):
            img = np.frombuffer(payloads[i][: H * W * 3], dtype=np.uint8).reshape(H, W, 3)
            np.testing.assert_array_equal(img, np.repeat(pixels[key][:, :, None], 3, axis=2))


def test_manifest_stats_and_checksums(fake_orl, raw_conversion):
    _, pixels = fake_orl
    out, manifest = raw_conversion
    train = np.stack([pixels[k] for k in SPLIT_KEYS["train"]]).astype(np.float64) / 255.0
    assert manifest["mean"] == pytest.approx([train.mean()] * 3, abs=2e-6)  # stats of the train split
    assert manifest["std"] == pytest.approx([train.std()] * 3, abs=2e-6)
    assert manifest["checksums"] == checksum_tree(out)  # every file, sha256, manifest excluded
    assert set(manifest["checksums"]) >= {"ffcv/train.beton", "ffcv/test.beton", "dali/train/samples.npy",
                                          "dali/train/shard-00003.tar", "dali/train/shard-00003.idx"}
    assert not os.path.exists(out + ".partial")
    data = open_converted(out)
    assert data.storage == "raw" and sorted(data.formats()) == ["dali", "ffcv"] and data.num_classes == 40


def test_jpeg_round_trip_within_tolerance(fake_orl, tmp_path):
    """Default storage (JPEG q90): every image within a mean abs error of 3 grey levels; labels exact.
    The beton stores the very same JPEG bytes as the shards."""
    root, pixels = fake_orl
    out = str(tmp_path / "jpg")
    formats = ("ffcv", "dali") if _has("ffcv") else ("dali",)
    manifest = convert("orl_faces", root, out, _opts(formats=formats))
    assert manifest["image"]["storage"] == "jpg"
    worst = 0.0
    for split, keys in SPLIT_KEYS.items():
        assert manifest["splits"][split]["count"] == len(keys)
        reader = _reader(out, manifest, split)
        np.testing.assert_array_equal(reader.table["label"], [p - 1 for p, _ in keys])
        for i, key in enumerate(keys):
            payload = reader.payload(i)
            assert payload[:3] == b"\xff\xd8\xff"  # a JPEG
            rgb = decode_bytes(payload).astype(np.int16)
            assert rgb.shape == (H, W, 3)
            err = float(np.abs(rgb - pixels[key][:, :, None]).mean())
            worst = max(worst, err)
        if "ffcv" in formats:
            r, payloads = _beton_payloads(os.path.join(out, "ffcv", f"{split}.beton"))
            np.testing.assert_array_equal(r.metadata["f0"]["mode"], 0)  # FFCV's IMAGE_MODES["jpg"]
            np.testing.assert_array_equal(r.metadata["f1"], reader.table["label"])
            for i in range(len(keys)):
                assert payloads[i] == reader.payload(i), f"{split}[{i}]: beton JPEG differs from the shard's"
    assert worst < 3.0, worst  # measured ~1 grey level on these smooth images


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -------------------------------------------------------------------------------------- determinism


def test_conversion_is_deterministic(fake_orl, tmp_path):
    root, _ = fake_orl
    a = convert("orl_faces", root, str(tmp_path / "a"), _opts())
    b = convert("orl_faces", root, str(tmp_path / "b"), _opts())
    assert a["checksums"] == b["checksums"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    # the worker count changes nothing
    c = convert("orl_faces", root, str(tmp_path / "c"), _opts(workers=1))
    assert c["checksums"] == a["checksums"]
    assert "workers" not in c["options"]  # the worker count changes no byte of the output
    assert (tmp_path / "c" / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()


def test_ffcv_conversion_is_deterministic(fake_orl, tmp_path):
    pytest.importorskip("ffcv")
    root, _ = fake_orl
    a = convert("orl_faces", root, str(tmp_path / "a"), _opts(formats=("ffcv", "dali")))
    b = convert("orl_faces", root, str(tmp_path / "b"), _opts(formats=("ffcv", "dali")))
    assert "ffcv/train.beton" in a["checksums"]
    assert a["checksums"] == b["checksums"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    with open(tmp_path / "a" / "ffcv" / "train.beton", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == a["checksums"]["ffcv/train.beton"]


# --------------------------------------------------------------------------------------- bad input


def test_corrupt_image_is_named(orl_copy, tmp_path):
    bad = orl_copy / "s3" / "5.pgm"
    bad.write_bytes(b"this is not an image at all" * 10)
    out = str(tmp_path / "data")
    with pytest.raises(UserError) as info:
        convert("orl_faces", str(orl_copy), out, _opts())
    assert str(bad) in str(info.value)
    assert "--skip-corrupt" in str(info.value)
    assert not os.path.exists(out)


def test_skip_corrupt(orl_copy, fake_orl, tmp_path):
    _, pixels = fake_orl
    (orl_copy / "s3" / "5.pgm").write_bytes(b"garbage")
    out = str(tmp_path / "data")
    manifest = convert("orl_faces", str(orl_copy), out, _opts(skip_corrupt=True, storage="raw"))
    train = manifest["splits"]["train"]
    assert train["count"] == 319
    assert train["skipped_corrupt"] == [os.path.join("s3", "5.pgm")]
    assert train["label_counts"][2] == 7 and sum(train["label_counts"]) == 319
    assert manifest["splits"]["test"]["count"] == 80 and manifest["splits"]["test"]["skipped_corrupt"] == []
    keys = [k for k in SPLIT_KEYS["train"] if k != (3, 5)]
    reader = _reader(out, manifest, "train")
    assert len(reader) == 319
    np.testing.assert_array_equal(reader.table["label"], [p - 1 for p, _ in keys])
    for i in (15, 20, 21, 318):  # around the gap (s3/5 was train sample 20) and the end
        np.testing.assert_array_equal(decode_bytes(reader.payload(i))[:, :, 0], pixels[keys[i]])


def test_missing_image_names_the_expected_path(orl_copy, tmp_path):
    missing = orl_copy / "s40" / "10.pgm"
    missing.unlink()
    with pytest.raises(UserError) as info:
        convert("orl_faces", str(orl_copy), str(tmp_path / "data"), _opts())
    assert str(missing) in str(info.value)
    assert not os.path.exists(tmp_path / "data")


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        convert("orl_faces", str(tmp_path / "nowhere"), str(tmp_path / "data"), _opts())


def test_existing_output_needs_overwrite(fake_orl, tmp_path):
    root, _ = fake_orl
    out = str(tmp_path / "data")
    convert("orl_faces", root, out, _opts())
    before = (tmp_path / "data" / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="overwrite"):
        convert("orl_faces", root, out, _opts(jpeg_quality=50))
    assert (tmp_path / "data" / "manifest.json").read_bytes() == before  # untouched
    manifest = convert("orl_faces", root, out, _opts(jpeg_quality=50, overwrite=True))
    assert manifest["options"]["jpeg_quality"] == 50
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["options"]["jpeg_quality"] == 50


def test_output_that_is_a_file(fake_orl, tmp_path):
    target = tmp_path / "data"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        convert("orl_faces", fake_orl[0], str(target), _opts())


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="orl_faces"):  # lists the known names
        convert("no_such_dataset", None, str(tmp_path / "data"), _opts())


# ------------------------------------------------------------------------------------- DALI's reader


def _dali_read(shards, indexes, ext, batch):
    """Labels (and decoded image shapes) as DALI's own webdataset reader returns them, CPU only."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None)
    def pipe():
        encoded, cls = fn.readers.webdataset(paths=shards, index_paths=indexes, ext=ext, random_shuffle=False,
                                             name="reader")
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    total = p.epoch_size("reader")
    labels, images = [], []
    while len(labels) < total:
        imgs, cls = p.run()
        for i in range(len(cls)):
            if len(labels) < total:
                labels.append(int(bytes(np.array(cls[i])).decode("ascii")))
                images.append(np.array(imgs[i]))
    del p
    return total, labels, images


def test_dali_reader_opens_the_shards(orl_data):
    pytest.importorskip("nvidia.dali")
    manifest = open_converted(orl_data).manifest
    for split, count in (("train", 320), ("test", 80)):
        info = manifest["splits"][split]
        table = np.load(os.path.join(orl_data, info["dali"]["samples"]))
        total, labels, images = _dali_read([os.path.join(orl_data, s) for s in info["dali"]["shards"]],
                                           [os.path.join(orl_data, s) for s in info["dali"]["index_files"]],
                                           ["jpg", "cls"], 32)
        assert total == count == len(table)
        assert labels == table["label"].tolist()
        assert {im.shape for im in images} == {(112, 92, 3)}


def test_dali_reader_multi_shard_png(fake_orl, raw_conversion):
    """The DALI index of every shard (offsets past the first shard included) points at the right members."""
    pytest.importorskip("nvidia.dali")
    _, pixels = fake_orl
    out, manifest = raw_conversion
    info = manifest["splits"]["train"]
    total, labels, images = _dali_read([os.path.join(out, s) for s in info["dali"]["shards"]],
                                       [os.path.join(out, s) for s in info["dali"]["index_files"]],
                                       ["png", "cls"], 64)
    assert total == 320
    assert labels == [p - 1 for p, _ in SPLIT_KEYS["train"]]
    for i in (0, 99, 100, 250, 319):
        np.testing.assert_array_equal(images[i][:, :, 1], pixels[SPLIT_KEYS["train"][i]])
