"""Stanford Dogs: a miniature official layout (Images/, Annotation/, lists/*.mat) -> conversion, labels, errors."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import scipy.io

from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.images import load_rgb_file
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

# the real first folders, in sorted order; "Shih-Tzu" checks that only the first dash splits the name
FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu"]
IMAGE_IDS = {"train": [10074, 7, 3120], "test": [588, 12]}  # per class


def _column_cell(strings):
    cell = np.empty((len(strings), 1), dtype=object)  # N x 1 cells, as in the real lists
    cell[:, 0] = strings
    return cell


def _write_list(path, files, labels):
    scipy.io.savemat(path, {"file_list": _column_cell(files), "annotation_list": _column_cell([f[:-4] for f in files]),
                            "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1)})


@pytest.fixture
def dogs(tmp_path):
    root = tmp_path / "stanford_dogs"
    pics, lists = {}, {}
    for split, ids in IMAGE_IDS.items():
        entries = []
        for k, folder in enumerate(FOLDERS):
            wnid = folder.split("-")[0]
            for i in ids:
                rel = f"{folder}/{wnid}_{i + k}.jpg"
                write_image(str(root / "Images" / rel), make_image(len(pics), 20 + k, 30 - k))
                pics[rel] = load_rgb_file(str(root / "Images" / rel))  # the pixels the converter reads
                os.makedirs(root / "Annotation" / folder, exist_ok=True)
                (root / "Annotation" / folder / f"{wnid}_{i + k}").write_text("<annotation></annotation>")
                entries.append((rel, k + 1))  # labels 1-based
        entries.reverse()  # the lists need not be sorted
        lists[split] = entries
    os.makedirs(root / "lists")
    for split, entries in lists.items():
        _write_list(root / "lists" / f"{split}_list.mat", *zip(*entries))
    everything = lists["train"] + lists["test"]
    _write_list(root / "lists" / "file_list.mat", *zip(*everything))
    return root, pics, lists


def test_dogs_convert(dogs, tmp_path):
    root, pics, lists = dogs
    out = str(tmp_path) + "-out"  # beside the dataset, not inside --root
    manifest = convert("stanford_dogs", str(tmp_path), out, ConvertOptions(progress=False, per_shard=4))  # parent
    assert manifest["classes"] == ["Chihuahua", "Japanese_spaniel", "Shih-Tzu"]
    assert manifest["extra"]["wnids"] == ["n02085620", "n02085782", "n02086240"]
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 9, "test": 6}
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    for split, entries in lists.items():
        ordered = sorted(entries)
        got = decoded_split(out, split)
        assert got["labels"].tolist() == [label - 1 for _, label in ordered]
        for image, (rel, _) in zip(got["images"], ordered):
            assert_pixels_close(image, pics[rel], exact=False)
    check_ffcv(out, ["train", "test"])
    train_one_epoch(out, str(tmp_path))


def test_flat_lists_mirror(dogs, tmp_path):
    root, _, lists = dogs
    for name in os.listdir(root / "lists"):  # lists.tar extracts its .mat files beside Images/
        shutil.move(str(root / "lists" / name), str(root / name))
    os.rmdir(root / "lists")
    out = str(tmp_path / "out")
    manifest = convert("stanford_dogs", str(root), out, ConvertOptions(formats=("dali",), progress=False))
    assert manifest["splits"]["test"]["count"] == 6
    assert decoded_split(out, "test")["labels"].tolist() == [lb - 1 for _, lb in sorted(lists["test"])]


def test_lists_that_disagree_with_folders(dogs, tmp_path):
    root, _, lists = dogs
    files, labels = zip(*lists["test"])
    _write_list(root / "lists" / "test_list.mat", files, [lb % 3 + 1 for lb in labels])  # labels shifted by one
    with pytest.raises(UserError, match="disagree"):
        convert("stanford_dogs", str(root), str(tmp_path / "out"), ConvertOptions(progress=False))


def test_missing_list_is_named(dogs, tmp_path):
    root, _, _ = dogs
    os.remove(root / "lists" / "test_list.mat")
    with pytest.raises(UserError, match=os.path.join("lists", "test_list.mat")):
        convert("stanford_dogs", str(root), str(tmp_path / "out"), ConvertOptions(progress=False))
    with pytest.raises(UserError, match="Images"):
        convert("stanford_dogs", str(root / "lists"), str(tmp_path / "out"), ConvertOptions(progress=False))
    assert not os.path.exists(tmp_path / "out")
