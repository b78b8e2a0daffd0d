"""VGGFace2 converter on a miniature copy of the official layout.

Four train identities (7, 4, 1 and 12 face crops of varying size, real ``nnnn_nn.jpg`` names), two
official test identities (disjoint, not converted), ``train_list.txt`` / ``test_list.txt`` and an
``identity_meta.csv`` with the real header, quoted names (one holding a comma) and a test identity row.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.images import load_rgb_file
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

TRAIN = {"n000002": 7, "n000003": 4, "n000005": 1, "n000010": 12}  # identity -> images (sorted ids)
TEST = {"n000001": 3, "n000004": 2}
NAMES = {"n000001": "14th_Dalai_Lama", "n000002": "A_Fine_Frenzy", "n000003": "A._A._Gill",
         "n000004": "A._J._Buckley", "n000005": "Abdullah, King of Jordan", "n000010": "Zac_Efron"}
IDS = sorted(TRAIN)


def _files(n: int):
    """Real-style names: 0001_01.jpg, 0002_01.jpg, 0002_02.jpg, ..."""
    return [f"{1 + i // 2:04d}_{1 + i % 2:02d}.jpg" for i in range(n)]


def _build(root) -> dict:
    os.makedirs(root)
    pixels, seed = {}, 0
    for split, ids in (("train", TRAIN), ("test", TEST)):
        lines = []
        for ident, n in ids.items():
            for name in _files(n):
                seed += 1
                path = os.path.join(root, split, ident, name)
                write_image(path, make_image(seed, 24 + seed % 13, 20 + seed % 9))
                pixels[f"{split}/{ident}/{name}"] = load_rgb_file(path)  # the decoded source JPEG
                lines.append(f"{ident}/{name}")
        with open(os.path.join(root, f"{split}_list.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "identity_meta.csv"), "w") as f:
        f.write("Class_ID, Name, Sample_Num, Flag, Gender\n")
        for ident in sorted(NAMES):
            n, flag = (TRAIN[ident], 1) if ident in TRAIN else (TEST[ident], 0)
            f.write(f'{ident}, "{NAMES[ident]}", {n}, {flag}, m\n')
    return pixels


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vgg") / "vggface2")
    return root, _build(root)


@pytest.fixture
def vgg_copy(vgg, tmp_path):
    dst = str(tmp_path / "copy" / "vggface2")
    shutil.copytree(vgg[0], dst)
    return dst


def _read(root, **kw):
    return DATASETS.get("vggface2").read(root, **kw)


def _expected_test(holdout: float, seed: int) -> dict:
    """The documented rule, recomputed: {identity: held-out file names}."""
    out = {}
    for c, ident in enumerate(IDS):
        files = _files(TRAIN[ident])
        k = max(int(round(holdout * len(files))), 1) if len(files) >= 2 else 0
        out[ident] = sorted(files[i] for i in np.random.default_rng([seed, c]).permutation(len(files))[:k])
    return out


@pytest.mark.parametrize("holdout,seed", [(0.1, 0), (0.3, 7)])
def test_holdout_rule(vgg, holdout, seed):
    src = _read(vgg[0], holdout=holdout, seed=seed)
    train, test = src.splits["train"], src.splits["test"]
    want = _expected_test(holdout, seed)
    assert test.names == [f"train/{i}/{f}" for i in IDS for f in want[i]]  # sorted order kept
    assert train.names == [f"train/{i}/{f}" for i in IDS for f in _files(TRAIN[i]) if f not in want[i]]
    assert not set(train.names) & set(test.names)
    assert len(train) + len(test) == sum(TRAIN.values())
    for c, ident in enumerate(IDS):
        n, k = TRAIN[ident], int(np.sum(test.labels == c))
        assert k == (max(round(holdout * n), 1) if n >= 2 else 0)
        assert np.sum(train.labels == c) == n - k
        if n >= 2:
            assert k >= 1 and n - k >= 1  # every identity with >= 2 images is in both splits
    assert not any(s.startswith("train/n000005/") for s in test.names)  # 1 image: train only
    assert any(s.startswith("train/n000005/") for s in train.names)
    assert f"{holdout:g}" in src.split_rule and f"[{seed}, identity index]" in src.split_rule


def test_holdout_is_seeded(vgg):
    a, b = _read(vgg[0], seed=0), _read(vgg[0], seed=0)
    assert a.splits["test"].names == b.splits["test"].names  # deterministic for a seed
    np.testing.assert_array_equal(a.splits["train"].labels, b.splits["train"].labels)
    c = _read(vgg[0], seed=1)
    assert a.splits["test"].names != c.splits["test"].names  # another seed, another hold-out
    assert len(a.splits["test"]) == len(c.splits["test"])  # same per-identity counts


def test_labels_names_and_extra(vgg):
    src = _read(vgg[0])
    assert src.classes == [NAMES[i] for i in IDS]  # from identity_meta.csv, "Abdullah, King of Jordan" whole
    assert src.classes[2] == "Abdullah, King of Jordan"
    for split in src.splits.values():
        assert split.labels.dtype == np.int64
        np.testing.assert_array_equal(split.labels, [IDS.index(n.split("/")[1]) for n in split.names])
    assert src.extra["identity_ids"] == IDS
    assert src.extra["official_test_identities"] == len(TEST)
    assert src.extra["official_test_images"] == sum(TEST.values())
    assert "not converted" in src.extra["official_test_note"]
    assert src.extra["file_list"] == "train_list.txt"


def test_convert_both_formats(vgg, tmp_path):
    root, pixels = vgg
    out = str(tmp_path / "out")
    manifest = convert("vggface2", root, out, ConvertOptions(progress=False, per_shard=8))
    src = _read(root)
    assert manifest["classes"] == [NAMES[i] for i in IDS] and manifest["num_classes"] == 4
    assert manifest["image"]["storage"] == "jpg" and manifest["image"]["default_res"] == 112
    assert manifest["extra"]["official_test_identities"] == 2
    for split in ("train", "test"):
        info, names = manifest["splits"][split], src.splits[split].names
        assert info["count"] == len(names) == {"train": 21, "test": 3}[split]
        got = decoded_split(out, split)
        np.testing.assert_array_equal(got["labels"], src.splits[split].labels)
        for image, name in zip(got["images"], names):
            assert_pixels_close(image, pixels[name], exact=False)
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    check_ffcv(out, ["train", "test"])
    assert train_one_epoch(out, str(tmp_path))


def test_folder_scan_without_list_and_parent_root(vgg_copy):
    with_list = _read(vgg_copy)
    os.remove(os.path.join(vgg_copy, "train_list.txt"))
    scanned = _read(os.path.dirname(vgg_copy))  # the parent of vggface2/ is accepted too
    assert scanned.extra["file_list"] == "folder scan"
    for split in ("train", "test"):
        assert scanned.splits[split].names == with_list.splits[split].names
        np.testing.assert_array_equal(scanned.splits[split].labels, with_list.splits[split].labels)


def test_class_names_fall_back_to_ids(vgg_copy):
    os.remove(os.path.join(vgg_copy, "identity_meta.csv"))
    assert _read(vgg_copy).classes == IDS


def test_listed_file_missing_on_disk(vgg_copy):
    os.remove(os.path.join(vgg_copy, "train", "n000010", "0003_02.jpg"))
    with pytest.raises(UserError, match=r"n000010/0003_02\.jpg.*train_list\.txt:\d+"):
        _read(vgg_copy)


def test_missing_train_folder(vgg_copy):
    shutil.rmtree(os.path.join(vgg_copy, "train"))
    with pytest.raises(UserError, match=os.path.join(vgg_copy, "train")):
        _read(vgg_copy)


def test_bad_options(vgg):
    with pytest.raises(UserError, match="holdout"):
        _read(vgg[0], holdout=1.5)
    with pytest.raises(UserError, match="seed"):
        _read(vgg[0], seed="x")


def test_manifest_records_rule(vgg, tmp_path):
    out = str(tmp_path / "out")
    convert("vggface2", vgg[0], out, ConvertOptions(progress=False, formats=("dali",), extra={"holdout": 0.3, "seed": 5}))
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["extra"]["holdout"] == 0.3 and manifest["extra"]["seed"] == 5
    assert manifest["splits"]["test"]["count"] == sum(len(v) for v in _expected_test(0.3, 5).values())
    assert "disjoint" in manifest["split_rule"]
