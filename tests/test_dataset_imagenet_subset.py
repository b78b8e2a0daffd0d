"""ImageNet class subset (ImageNet-100 style) on the miniature ImageNet of test_dataset_imagenet.

The list names 3 of the 4 classes in an unsorted order; labels must follow the SORTED subset, and the
manifest must map each class back to its index in the full sorted order (for slicing a teacher's logits).
"""
from __future__ import annotations

import inspect
import os
import shutil

import numpy as np
import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, train_one_epoch
from test_dataset_imagenet import SORTED, TRAIN, VAL_LABELS, build_imagenet

LISTED = ["n02119789", "n01440764", "n02110185"]  # the list's order (not sorted)
SUBSET = ["n01440764", "n02110185", "n02119789"]
FULL_INDEX = [0, 2, 3]  # positions in the 4-class sorted order
KEEP_VAL = [i for i, c in enumerate(VAL_LABELS) if c in FULL_INDEX]  # dataset order of the flat val
SUB_VAL_LABELS = [2, 0, 1, 2, 1, 0]  # worked out by hand: full index 3 -> 2, 0 -> 0, 2 -> 1
SUB_TRAIN_LABELS = [c for c in range(3) for _ in range(3)]
read = DATASETS.get("imagenet_subset").read


def _list_file(folder, wnids, header="# CMC imagenet100.txt style\n") -> str:
    path = os.path.join(str(folder), "imagenet100.txt")
    with open(path, "w") as f:
        f.write(header + "".join(f"{w}\n" for w in wnids) + "\n")
    return path


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    expect = build_imagenet(root)
    return str(root), expect, _list_file(tmp_path_factory.mktemp("lists"), LISTED)


@pytest.fixture(scope="module")
def converted(imagenet, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("subset_out") / "data")
    manifest = convert("imagenet_subset", imagenet[0], out,
                       ConvertOptions(progress=False, per_shard=4, extra={"classes": imagenet[2]}))
    return out, manifest


def test_labels_order_and_index_map(imagenet, converted):
    out, manifest = converted
    expect = imagenet[1]
    assert SUB_VAL_LABELS == [FULL_INDEX.index(VAL_LABELS[i]) for i in KEEP_VAL]
    assert manifest["classes"] == SUBSET and manifest["num_classes"] == 3
    extra = manifest["extra"]
    assert extra["listed_wnids"] == LISTED and extra["wnids"] == SUBSET
    assert extra["full_index"] == FULL_INDEX and extra["full_order"] == "sorted leaf wnids of meta.mat"
    assert extra["class_names"] == ["tench, Tinca tinca", "Siberian husky", "kit fox, Vulpes macrotis"]
    assert extra["classes_file"] == imagenet[2]
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 9, "val": 6}
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    keep_train = [k for k, w in enumerate(w for w in SORTED for _ in TRAIN[w]) if w in SUBSET]
    for split, labels, want in (("train", SUB_TRAIN_LABELS, [expect["train"][k] for k in keep_train]),
                                ("val", SUB_VAL_LABELS, [expect["val"][k] for k in KEEP_VAL])):
        got = decoded_split(out, split)
        np.testing.assert_array_equal(got["labels"], labels)
        assert len(got["images"]) == len(want)
        for image, ref in zip(got["images"], want):
            assert_pixels_close(image, ref, exact=False)
    check_ffcv(out, ["train", "val"])


def test_one_training_epoch(converted, tmp_path):
    summary = train_one_epoch(converted[0], str(tmp_path))
    assert summary["epochs"] == 1 and summary["top1"] is not None


def test_train_tar_and_val_folders(imagenet, tmp_path):
    build_imagenet(tmp_path, train_tar=True, val="folders")
    source = read(str(tmp_path), classes=imagenet[2])
    train = source.splits["train"]
    assert train.names[0] == "ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG"
    assert not any("n02100735" in n for n in train.names)  # the unlisted class's inner tar is skipped
    np.testing.assert_array_equal(train.labels, SUB_TRAIN_LABELS)
    assert sorted(source.splits["val"].labels.tolist()) == sorted(SUB_VAL_LABELS)
    assert all(n.split("/")[1] in SUBSET for n in source.splits["val"].names)
    assert source.extra["full_index"] == FULL_INDEX and source.extra["train_source"] == "ILSVRC2012_img_train.tar"


def test_prefiltered_copy_without_devkit(imagenet, tmp_path):
    """Just the subset's class folders, no devkit: works; the full index is unknown and says so."""
    build_imagenet(tmp_path, val="folders", devkit=False)
    for split in ("train", "val"):
        shutil.rmtree(tmp_path / split / "n02100735")
    source = read(str(tmp_path), classes=imagenet[2])
    np.testing.assert_array_equal(source.splits["train"].labels, SUB_TRAIN_LABELS)
    assert source.extra["full_index"] is None and source.extra["full_order"].startswith("unknown")
    assert source.extra["class_names"] is None


def test_reader_option_is_named_classes():
    assert [p for p in inspect.signature(read).parameters if p != "root"] == ["classes"]


@pytest.mark.parametrize("wnids,message", [
    (None, "--opt classes="),
    (["n01440764", "n09999999", "n08888888"], "n09999999, n08888888"),
    (["n01440764", "tench"], "line 3: 'tench'"),
    (["n01440764", "n01440764"], "repeats n01440764"),
])
def test_bad_class_lists(imagenet, tmp_path, wnids, message):
    classes = None if wnids is None else _list_file(tmp_path, wnids)
    with pytest.raises(UserError, match=message):
        read(imagenet[0], classes=classes)


def test_missing_list_file_and_layout(imagenet, tmp_path):
    with pytest.raises(UserError, match="missing.txt does not exist"):
        read(imagenet[0], classes=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="ILSVRC2012_img_train.tar"):
        read(str(tmp_path), classes=imagenet[2])
