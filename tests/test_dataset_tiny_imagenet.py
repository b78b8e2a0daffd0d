"""Tiny-ImageNet converter on a miniature official layout (3 classes, 64x64 JPEGs, raw storage).

Traps kept from the real files: wnids.txt is not sorted (labels follow the SORTED wnids), val labels come
from the tab-separated val_annotations.txt, some images are greyscale, and val_10 sorts after val_2.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

WNIDS_TXT = ["n03444034", "n01443537", "n02124075"]  # the file's order, as shipped: not sorted
SORTED = ["n01443537", "n02124075", "n03444034"]
WORDS = {"n00001740": "entity", "n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat",
         "n03444034": "go-kart", "n09999999": "unused synset"}
TRAIN_FILES = {w: [f"{w}_{k}.JPEG" for k in (0, 10, 1)] for w in SORTED}  # sorted: _0, _1, _10
VAL_WNIDS = ["n03444034", "n01443537", "n02124075", "n03444034", "n02124075", "n01443537",
             "n03444034", "n03444034", "n01443537", "n02124075", "n02124075", "n03444034"]  # val_0..val_11
VAL_LABELS = [2, 0, 1, 2, 1, 0, 2, 2, 0, 1, 1, 2]  # sorted-wnid index, worked out by hand
TRAIN_LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
GREY = ("n02124075_10.JPEG", "val_3.JPEG")


def build_tiny(parent) -> dict:
    base = os.path.join(str(parent), "tiny-imagenet-200")
    os.makedirs(base)
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("".join(f"{w}\n" for w in WNIDS_TXT))
    with open(os.path.join(base, "words.txt"), "w") as f:
        f.write("".join(f"{w}\t{names}\n" for w, names in WORDS.items()))
    pixels, seed = {}, 0
    for wnid in WNIDS_TXT:
        boxes = []
        for name in TRAIN_FILES[wnid]:
            seed += 1
            path = os.path.join(base, "train", wnid, "images", name)
            write_image(path, make_image(seed, 64, 64, grey=name in GREY))
            boxes.append(f"{name}\t0\t10\t63\t58\n")
        with open(os.path.join(base, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(boxes))
    lines = []
    for i, wnid in enumerate(VAL_WNIDS):
        name = f"val_{i}.JPEG"
        write_image(os.path.join(base, "val", "images", name), make_image(100 + i, 64, 64, grey=name in GREY))
        lines.append(f"{name}\t{wnid}\t0\t32\t44\t62\n")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(lines))
    write_image(os.path.join(base, "test", "images", "test_0.JPEG"), make_image(999, 64, 64))
    for rel in [os.path.join("train", w, "images", n) for w in SORTED for n in sorted(TRAIN_FILES[w])] + \
               [os.path.join("val", "images", f"val_{i}.JPEG") for i in range(len(VAL_WNIDS))]:
        with Image.open(os.path.join(base, rel)) as im:
            pixels[rel] = np.asarray(im.convert("RGB"))
    return pixels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    parent = tmp_path_factory.mktemp("tiny")
    return str(parent), build_tiny(parent)


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny_out") / "data")
    return out, convert("tiny_imagenet", tiny[0], out, ConvertOptions(progress=False, per_shard=5))


def test_labels_classes_and_exact_pixels(tiny, converted):
    out, manifest = converted
    pixels = tiny[1]
    assert manifest["classes"] == SORTED
    assert manifest["extra"]["wnids_txt_order"] == WNIDS_TXT
    assert manifest["extra"]["class_names"] == ["goldfish, Carassius auratus", "Egyptian cat", "go-kart"]
    assert set(manifest["splits"]) == {"train", "val"}  # test/ has no labels
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 9, "val": 12}
    assert manifest["image"] == {"storage": "raw", "channels": 3, "resolution": "64x64 RGB (some greyscale)",
                                 "low_res": True, "default_res": 64}
    assert manifest["splits"]["train"]["fixed_size"] == [64, 64]
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 2
    order = {"train": [os.path.join("train", w, "images", n) for w in SORTED for n in sorted(TRAIN_FILES[w])],
             "val": [os.path.join("val", "images", f"val_{i}.JPEG") for i in range(len(VAL_WNIDS))]}
    assert order["train"][5].endswith("n02124075_10.JPEG")
    for split, labels in (("train", TRAIN_LABELS), ("val", VAL_LABELS)):
        got = decoded_split(out, split)
        np.testing.assert_array_equal(got["labels"], labels)
        for image, rel in zip(got["images"], order[split]):
            assert_pixels_close(image, pixels[rel], exact=True)
    check_ffcv(out, ["train", "val"])


def test_greyscale_images_become_rgb(tiny):
    base = os.path.join(tiny[0], "tiny-imagenet-200")
    with Image.open(os.path.join(base, "val", "images", "val_3.JPEG")) as im:
        assert im.mode == "L"
    source = DATASETS.get("tiny_imagenet").read(os.path.join(tiny[0], "tiny-imagenet-200"))  # the folder itself
    val = source.splits["val"]
    assert val.names[:4] == ["val/images/val_0.JPEG", "val/images/val_1.JPEG", "val/images/val_2.JPEG",
                             "val/images/val_3.JPEG"]  # numeric order: val_10 comes after val_9
    rgb = source.load(val.refs[3])
    assert rgb.shape == (64, 64, 3)
    np.testing.assert_array_equal(rgb[:, :, 0], rgb[:, :, 2])


def test_one_training_epoch(converted, tmp_path):
    summary = train_one_epoch(converted[0], str(tmp_path), res=16)  # low-res stem: keep it small
    assert summary["epochs"] == 1 and summary["top1"] is not None


@pytest.mark.parametrize("remove,message", [
    ("wnids.txt", "wnids.txt"),
    ("words.txt", "tiny-imagenet-200/words.txt"),
    ("val/val_annotations.txt", "val/val_annotations.txt"),
    ("val/images", "val/images"),
    ("train/n02124075", "train/n02124075/images"),
])
def test_broken_layout_names_the_file(tiny, tmp_path, remove, message):
    base = tmp_path / "tiny-imagenet-200"
    shutil.copytree(os.path.join(tiny[0], "tiny-imagenet-200"), base)
    target = base / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=message):
        DATASETS.get("tiny_imagenet").read(str(tmp_path))


def test_val_annotation_with_unknown_wnid(tiny, tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    shutil.copytree(os.path.join(tiny[0], "tiny-imagenet-200"), base)
    with open(base / "val" / "val_annotations.txt", "a") as f:
        f.write("val_12.JPEG\tn04999999\t0\t0\t10\t10\n")
    with pytest.raises(UserError, match="line 13"):
        DATASETS.get("tiny_imagenet").read(str(tmp_path))
