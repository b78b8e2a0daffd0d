"""The generic readers: ``imagefolder`` (class-per-folder) and ``filelist`` (``<path> <label>`` lists).

Miniature trees with mixed extensions and cases (.jpg, .JPEG, .png, .bmp, .pgm greyscale), nested
folders, ignored files, hidden folders, and list files whose paths hold spaces.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.images import load_rgb_file
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

# imagefolder: split -> class -> files (in the sorted order the reader must produce)
TREE = {
    "train": {"cat": ["a.jpg", "b.JPEG", "c.png", "d.bmp"], "dog": ["01.jpg", "02.pgm", "more/x.png", "z.webp"],
              "zebra": ["1.tif", "2.jpeg", "3.ppm"]},
    "val": {"cat": ["v1.jpg"], "dog": ["v2.png"], "zebra": ["v3.jpg"]},
    "test": {"cat": ["t1.jpg", "t2.jpg"], "dog": ["t3.png"]},  # a split may lack a class
}
CLASSES = ["cat", "dog", "zebra"]


def _write(path: str, seed: int) -> np.ndarray:
    grey = path.endswith(".pgm")
    write_image(path, make_image(seed, 16 + seed % 11, 12 + seed % 7, grey=grey))
    return load_rgb_file(path)


def _build_tree(root: str) -> dict:
    pixels, seed = {}, 100
    for split, classes in TREE.items():
        for cls, files in classes.items():
            for name in files:
                seed += 1
                pixels[f"{split}/{cls}/{name}"] = _write(os.path.join(root, split, cls, name), seed)
    with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
        f.write("not an image\n")
    _write(os.path.join(root, "train", "dog", ".ipynb_checkpoints", "skip.jpg"), 1)  # hidden: skipped
    return pixels


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagefolder") / "photos")
    return root, _build_tree(root)


@pytest.fixture
def tree_copy(tree, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(tree[0], dst)
    return dst


def _names(split: str):
    return [f"{split}/{c}/{f}" for c, files in TREE[split].items() for f in files]


def _labels(split: str):
    return [CLASSES.index(c) for c, files in TREE[split].items() for _ in files]


def test_imagefolder_reads_sorted_classes_and_files(tree):
    src = DATASETS.get("imagefolder").read(tree[0])
    assert src.classes == CLASSES and list(src.splits) == ["train", "val", "test"]
    for split in TREE:
        assert src.splits[split].names == _names(split)
        np.testing.assert_array_equal(src.splits[split].labels, _labels(split))


def test_imagefolder_convert_both_formats(tree, tmp_path):
    root, pixels = tree
    out = str(tmp_path / "out")
    manifest = convert("imagefolder", root, out, ConvertOptions(progress=False, per_shard=5))
    assert manifest["classes"] == CLASSES and manifest["image"]["storage"] == "jpg"
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    for split in TREE:
        got = decoded_split(out, split)
        assert manifest["splits"][split]["count"] == len(_names(split))
        np.testing.assert_array_equal(got["labels"], _labels(split))
        for image, name in zip(got["images"], _names(split)):
            assert_pixels_close(image, pixels[name], exact=False)
    check_ffcv(out, list(TREE))
    assert train_one_epoch(out, str(tmp_path))


def test_imagefolder_raw_storage_is_exact(tree, tmp_path):
    root, pixels = tree
    out = str(tmp_path / "out")
    manifest = convert("imagefolder", root, out, ConvertOptions(progress=False, formats=("dali",), storage="raw"))
    assert manifest["image"]["storage"] == "raw"
    got = decoded_split(out, "train")
    for image, name in zip(got["images"], _names("train")):
        assert_pixels_close(image, pixels[name], exact=True)


def test_imagefolder_class_folders_at_root(tree, tmp_path):
    src = DATASETS.get("imagefolder").read(os.path.join(tree[0], "train"))
    assert list(src.splits) == ["train"] and src.classes == CLASSES
    assert [f"train/{n}" for n in src.splits["train"].names] == _names("train")
    out = str(tmp_path / "out")
    manifest = convert("imagefolder", os.path.join(tree[0], "train"), out,
                       ConvertOptions(progress=False, formats=("dali",), val_fraction=0.3))
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 8, "val": 3}


def test_imagefolder_layout_errors(tree_copy):
    read = DATASETS.get("imagefolder").read
    os.rename(os.path.join(tree_copy, "val", "zebra"), os.path.join(tree_copy, "val", "zebu"))
    with pytest.raises(UserError, match=r"val/zebu is not a class of train"):
        read(tree_copy)
    shutil.rmtree(os.path.join(tree_copy, "val", "zebu"))
    _write(os.path.join(tree_copy, "test", "loose.jpg"), 3)
    with pytest.raises(UserError, match=r"test/loose\.jpg lies outside a class folder"):
        read(tree_copy)
    shutil.rmtree(os.path.join(tree_copy, "test"))
    shutil.rmtree(os.path.join(tree_copy, "train"))
    with pytest.raises(UserError, match=os.path.join(tree_copy, "train")):
        read(tree_copy)


# ------------------------------------------------------------------------------------------- filelist

LISTS = {  # split -> [(path, label)] in file order (not sorted: line order is kept)
    "train": [(f"imgs/class {c}/photo {i:02d}.jpg", c) for i in range(4) for c in (2, 0, 1)],
    "test": [("imgs/test/b.png", 1), ("imgs/test/a.jpg", 0), ("imgs/test/c.jpg", 2)],
}
LIST_CLASSES = ["apple", "banana split", "cherry"]


def _build_lists(root: str, prefix: str = "", classes: bool = True) -> dict:
    pixels, seed = {}, 300
    for split, rows in LISTS.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n")  # blank lines are skipped
            for path, label in rows:
                seed += 1
                pixels[path] = _write(os.path.join(root, path), seed)
                f.write(f"{path[len(prefix):]}\t{label}\n" if seed % 2 else f"{path[len(prefix):]} {label}\n")
    if classes:
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(LIST_CLASSES) + "\n")
    return pixels


@pytest.fixture
def lists(tmp_path):
    root = str(tmp_path / "lists")
    os.makedirs(root)
    return root, _build_lists(root)


def test_filelist_convert_both_formats(lists, tmp_path):
    root, pixels = lists
    out = str(tmp_path / "out")
    manifest = convert("filelist", root, out, ConvertOptions(progress=False, per_shard=8))
    assert manifest["classes"] == LIST_CLASSES and list(manifest["splits"]) == ["train", "test"]
    for split, rows in LISTS.items():
        got = decoded_split(out, split)
        assert manifest["splits"][split]["count"] == len(rows)
        np.testing.assert_array_equal(got["labels"], [label for _, label in rows])
        for image, (path, _) in zip(got["images"], rows):
            assert_pixels_close(image, pixels[path], exact=False)
    check_ffcv(out, list(LISTS))
    assert train_one_epoch(out, str(tmp_path))


def test_filelist_names_without_classes_file(tmp_path):
    root = str(tmp_path / "l")
    os.makedirs(root)
    _build_lists(root, classes=False)
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("imgs/test/a.jpg 4\n")  # K = largest label + 1 over all lists
    src = DATASETS.get("filelist").read(root)
    assert src.classes == ["0", "1", "2", "3", "4"] and list(src.splits) == ["train", "val", "test"]
    assert src.splits["train"].names == [p for p, _ in LISTS["train"]]


def test_filelist_images_root(tmp_path):
    root = str(tmp_path / "l")
    os.makedirs(root)
    _build_lists(root, prefix="imgs/")
    src = DATASETS.get("filelist").read(root, images_root="imgs")
    assert src.splits["test"].refs[0] == os.path.join(root, "imgs", "test", "b.png")
    with pytest.raises(UserError, match="missing"):
        DATASETS.get("filelist").read(root)  # without images_root the paths do not resolve


@pytest.mark.parametrize("line,match", [
    ("imgs/test/a.jpg x", r"test\.txt:5: expected '<image path> <integer label>'"),
    ("justonefield", r"test\.txt:5: expected"),
    ("imgs/test/a.jpg -1", r"test\.txt:5: label -1 is negative"),
    ("imgs/test/a.jpg 3", r"test\.txt:5: label 3 is out of range 0\.\.2"),
    ("imgs/test/gone.jpg 1", r"test\.txt:5: image .*imgs/test/gone\.jpg is missing"),
])
def test_filelist_errors(lists, line, match):
    root = lists[0]
    with open(os.path.join(root, "test.txt"), "a") as f:
        f.write(line + "\n")
    with pytest.raises(UserError, match=match):
        DATASETS.get("filelist").read(root)


def test_filelist_needs_train_txt(lists):
    os.remove(os.path.join(lists[0], "train.txt"))
    with pytest.raises(UserError, match=os.path.join(lists[0], "train.txt")):
        DATASETS.get("filelist").read(lists[0])
