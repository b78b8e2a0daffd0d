"""Flowers-102: a miniature official layout (jpg/, imagelabels.mat, setid.mat) -> conversion, labels, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.images import load_rgb_file
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

# 1-based class of image id i+1 (values span the full 1..102 range: 1 -> label 0, 102 -> label 101)
LABELS = [77, 1, 102, 5, 77, 1, 5, 102, 1, 77, 5, 102, 1, 5, 77, 102]
SETID = {"trnid": [9, 2, 14, 5, 1, 12, 7, 16], "valid": [3, 11, 4, 6], "tstid": [15, 8, 10, 13]}  # unsorted, as shipped
GREY = 3  # image_00003.jpg is greyscale (some real ones are)


def _row(values):
    return np.asarray(values, dtype=np.float64).reshape(1, -1)  # 1 x N double, as in the real files


@pytest.fixture
def flowers(tmp_path):
    root = tmp_path / "flowers-102"
    pics = {}
    for i in range(1, len(LABELS) + 1):
        h, w = 24 + i, 32 - i % 5
        path = str(root / "jpg" / f"image_{i:05d}.jpg")
        write_image(path, make_image(i, h, w, grey=i == GREY))
        pics[i] = load_rgb_file(path)  # the pixels the converter reads
    with Image.open(root / "jpg" / f"image_{GREY:05d}.jpg") as im:
        assert im.mode == "L"
    scipy.io.savemat(root / "imagelabels.mat", {"labels": _row(LABELS)})
    scipy.io.savemat(root / "setid.mat", {k: _row(v) for k, v in SETID.items()})
    return root, pics


def test_flowers_converts(flowers, tmp_path):
    root, pics = flowers
    out = str(tmp_path) + "-out"  # beside the dataset, not inside --root
    manifest = convert("flowers102", str(tmp_path), out, ConvertOptions(progress=False, per_shard=3))  # parent root
    assert manifest["num_classes"] == 102
    assert manifest["classes"][:2] == ["class_001", "class_002"] and manifest["classes"][-1] == "class_102"
    assert "class_001" in manifest["class_order"]
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 8, "val": 4, "test": 4}
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ids = sorted(SETID[key])
        got = decoded_split(out, split)
        assert got["labels"].tolist() == [LABELS[i - 1] - 1 for i in ids]
        for image, i in zip(got["images"], ids):
            assert_pixels_close(image, pics[i], exact=False)
            if i == GREY:  # a greyscale JPEG comes out as RGB with equal channels
                assert image.shape[2] == 3 and np.abs(image.astype(int) - image[:, :, :1]).max() <= 2
    counts = manifest["splits"]["train"]["label_counts"]
    assert len(counts) == 102 and counts[0] == 2 and counts[101] == 2 and counts[76] == 2 and counts[4] == 2
    check_ffcv(out, ["train", "val", "test"])
    train_one_epoch(out, str(tmp_path))


def test_missing_setid_is_named(flowers, tmp_path):
    root, _ = flowers
    os.remove(root / "setid.mat")
    with pytest.raises(UserError, match="setid.mat"):
        convert("flowers102", str(root), str(tmp_path / "out"), ConvertOptions(progress=False))
    with pytest.raises(UserError, match="imagelabels.mat"):
        convert("flowers102", str(root / "jpg"), str(tmp_path / "out"), ConvertOptions(progress=False))
    assert not os.path.exists(tmp_path / "out")


def test_ids_beyond_labels_are_refused(flowers, tmp_path):
    root, _ = flowers
    scipy.io.savemat(root / "setid.mat", {k: _row(v + [99]) for k, v in SETID.items()})
    with pytest.raises(UserError, match="different downloads"):
        convert("flowers102", str(root), str(tmp_path / "out"), ConvertOptions(progress=False))
