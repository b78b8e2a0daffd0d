"""Stanford Cars: a miniature devkit release (and the car_ims release) -> conversion, labels, boxes, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io

from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.images import load_rgb_file
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "smart fortwo Convertible 2012"]
# (file number, 1-based class) per split: written to the .mat out of order on purpose
TRAIN = [(7, 1), (1, 2), (3, 1), (10, 4), (2, 3), (5, 2), (9, 3), (4, 4), (8, 1), (6, 2)]
TEST = [(4, 3), (2, 1), (1, 4), (3, 2), (5, 1)]


def _struct(rows):
    """A 1 x N MATLAB struct array of scalar fields, as in the real annotation files."""
    fields = list(rows[0])
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        arr[0, i] = tuple(np.array([v]) if isinstance(v, str) else np.array([[v]], dtype=np.uint16)
                          for v in row.values())
    return arr


def _cell(strings):
    cell = np.empty((1, len(strings)), dtype=object)
    cell[0, :] = strings
    return cell


def _box(n, h, w):
    return {"bbox_x1": 1 + n % 3, "bbox_y1": 2, "bbox_x2": w - n % 4, "bbox_y2": h - 1}


def _photos(tmp_path, folder, entries, seed):
    images = {}
    for n, _ in entries:
        h, w = 20 + 2 * n, 28 + n
        path = str(tmp_path / folder / f"{n:05d}.jpg")
        write_image(path, make_image(seed + n, h, w))
        images[n] = load_rgb_file(path)  # the pixels the converter reads
    return images


@pytest.fixture
def devkit(tmp_path):
    root = tmp_path / "stanford_cars"
    pics = {"train": _photos(root, "cars_train", TRAIN, 0), "test": _photos(root, "cars_test", TEST, 100)}
    os.makedirs(root / "devkit")
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cell(NAMES)})
    for split, entries, name in (("train", TRAIN, "devkit/cars_train_annos.mat"),
                                 ("test", TEST, "cars_test_annos_withlabels.mat")):
        rows = [{**_box(n, *pics[split][n].shape[:2]), "class": c, "fname": f"{n:05d}.jpg"} for n, c in entries]
        scipy.io.savemat(root / name, {"annotations": _struct(rows)})
    unlabeled = [{**_box(n, *pics["test"][n].shape[:2]), "fname": f"{n:05d}.jpg"} for n, _ in TEST]
    scipy.io.savemat(root / "devkit" / "cars_test_annos.mat", {"annotations": _struct(unlabeled)})
    return root, pics


def test_devkit_release_converts(devkit, tmp_path):
    root, pics = devkit
    out = str(tmp_path) + "-out"  # beside the dataset, not inside --root
    manifest = convert("cars", str(tmp_path), out, ConvertOptions(progress=False, per_shard=4))  # parent root
    assert manifest["classes"] == NAMES and manifest["num_classes"] == 4
    assert {s: manifest["splits"][s]["count"] for s in ("train", "test")} == {"train": 10, "test": 5}
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    assert manifest["extra"]["crop_bbox"] is False and manifest["extra"]["release"] == "devkit"
    for split, entries in (("train", TRAIN), ("test", TEST)):
        got = decoded_split(out, split)
        ordered = sorted(entries)  # sorted by file name; class 1 -> label 0
        assert got["labels"].tolist() == [c - 1 for _, c in ordered]
        for image, (n, _) in zip(got["images"], ordered):
            assert_pixels_close(image, pics[split][n], exact=False)
    check_ffcv(out, ["train", "test"])
    train_one_epoch(out, str(tmp_path))


def test_crop_bbox(devkit, tmp_path):
    root, pics = devkit
    out = str(tmp_path / "out")
    manifest = convert("cars", str(root), out, ConvertOptions(formats=("dali",), progress=False,
                                                              extra={"crop_bbox": True}))
    assert manifest["extra"]["crop_bbox"] is True
    got = decoded_split(out, "test")
    for image, (n, _) in zip(got["images"], sorted(TEST)):
        src = pics["test"][n]
        b = _box(n, *src.shape[:2])
        want = src[b["bbox_y1"] - 1:b["bbox_y2"], b["bbox_x1"] - 1:b["bbox_x2"]]  # 1-based inclusive box
        assert_pixels_close(image, want, exact=False)


def test_car_ims_release(tmp_path):
    root = tmp_path / "cars"
    flags = [(n, c, 0) for n, c in TRAIN] + [(n + 20, c, 1) for n, c in TEST]
    pics = {}
    for n, c, _ in flags:
        write_image(str(root / "car_ims" / f"{n:06d}.jpg"), make_image(n, 16, 24))
        pics[n] = load_rgb_file(str(root / "car_ims" / f"{n:06d}.jpg"))
    rows = [{"relative_im_path": f"car_ims/{n:06d}.jpg", **_box(n, 16, 24), "class": c, "test": t} for n, c, t in flags]
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": _struct(rows), "class_names": _cell(NAMES)})
    out = str(tmp_path / "out")
    manifest = convert("cars", str(root), out, ConvertOptions(formats=("dali",), progress=False))
    assert manifest["extra"]["release"] == "car_ims" and manifest["classes"] == NAMES
    test = decoded_split(out, "test")
    assert test["labels"].tolist() == [c - 1 for _, c in sorted(TEST)]
    assert manifest["splits"]["train"]["count"] == 10
    assert_pixels_close(test["images"][0], pics[21], exact=False)


def test_missing_test_labels_is_named(devkit, tmp_path):
    root, _ = devkit
    os.remove(root / "cars_test_annos_withlabels.mat")
    with pytest.raises(UserError, match="cars_test_annos_withlabels.mat"):
        convert("cars", str(root), str(tmp_path / "out"), ConvertOptions(progress=False))
    with pytest.raises(UserError, match=os.path.join("devkit", "cars_meta.mat")):
        convert("cars", str(root / "cars_train"), str(tmp_path / "out"), ConvertOptions(progress=False))
    assert not os.path.exists(tmp_path / "out")
