"""ImageNet32 converter on miniature batch files (protocol-2 pickles and ``.npz``) and a ``map_clsloc.txt``
whose id order differs from sorted-wnid order, as the real one does."""
from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from layout_tools import check_ffcv, check_split, convert_once, decoded_split, train_one_epoch

# the first five lines of the real map_clsloc.txt: ids 1..5 are NOT in sorted-wnid order
CLSLOC = ["n02119789 1 kit_fox", "n02100735 2 English_setter", "n02110185 3 Siberian_husky",
          "n02096294 4 Australian_terrier", "n02102040 5 English_springer"]
SORTED = ["n02096294", "n02100735", "n02102040", "n02110185", "n02119789"]
ID_TO_LABEL = {1: 4, 2: 1, 3: 3, 4: 0, 5: 2}  # worked out by hand: id -> wnid -> index in SORTED
PER_BATCH, VAL_N = 2, 6


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batches(seed: int = 32):
    """{stem: (data N x 3072 uint8, 1-based ids)} for train_data_batch_1..10 and val_data."""
    rng = np.random.default_rng(seed)
    train_ids = rng.permutation(np.tile(np.arange(1, 6), 4)).tolist()  # every id appears, in mixed order
    out = {f"train_data_batch_{k}": (rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
                                     train_ids[(k - 1) * PER_BATCH : k * PER_BATCH]) for k in range(1, 11)}
    out["val_data"] = (rng.integers(0, 256, (VAL_N, 3072), dtype=np.uint8), [1, 4, 2, 5, 3, 1])
    return out


def _write(root, batches, npz: bool, folders: bool):
    root.mkdir(parents=True, exist_ok=True)
    (root / "map_clsloc.txt").write_text("\n".join(CLSLOC) + "\n")
    for stem, (data, ids) in batches.items():
        sub = root / (("Imagenet32_val" if stem == "val_data" else "Imagenet32_train") if folders else "")
        sub.mkdir(exist_ok=True)
        mean = data.mean(0)
        if npz:
            np.savez(sub / f"{stem}.npz", data=data, labels=np.asarray(ids), mean=mean)
        else:
            _dump(sub / stem, {"data": data, "labels": ids, "mean": mean})


def _hwc(row):
    return row.reshape(3, 32, 32).transpose(1, 2, 0)


def _expected(batches, split):
    stems = [f"train_data_batch_{k}" for k in range(1, 11)] if split == "train" else ["val_data"]
    data = np.concatenate([batches[s][0] for s in stems])  # batch 10 comes after batch 9, not after 1
    return data, [ID_TO_LABEL[i] for s in stems for i in batches[s][1]]


@pytest.fixture(scope="module")
def fake_pickles(tmp_path_factory):
    root = tmp_path_factory.mktemp("in32") / "imagenet32"
    batches = _batches()
    _write(root, batches, npz=False, folders=True)  # map_clsloc.txt + Imagenet32_train/ + Imagenet32_val/
    return root, batches


@pytest.fixture(scope="module")
def converted(fake_pickles, tmp_path_factory):
    return convert_once(tmp_path_factory, "imagenet32", fake_pickles[0], per_shard=8)


def test_conversion_remaps_labels_to_sorted_wnids(fake_pickles, converted):
    _, batches = fake_pickles
    out, manifest = converted
    assert manifest["classes"] == SORTED and manifest["num_classes"] == 5
    assert manifest["extra"]["class_names"] == ["Australian_terrier", "English_setter", "English_springer",
                                                "Siberian_husky", "kit_fox"]
    assert manifest["extra"]["clsloc_id_to_label"] == [ID_TO_LABEL[i] for i in range(1, 6)]
    assert list(manifest["splits"]) == ["train", "val"]
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    for split in ("train", "val"):
        data, labels = _expected(batches, split)
        assert len(labels) == {"train": 20, "val": 6}[split]
        check_split(out, manifest, split, labels, (_hwc(row) for row in data), exact=True)
    check_ffcv(out, ["train", "val"])


def test_one_training_epoch(converted, tmp_path):
    summary = train_one_epoch(converted[0], str(tmp_path))
    assert summary["epochs"] == 1 and summary["top1"] is not None  # evaluated on val


def test_npz_variant_flat_layout(tmp_path):
    batches = _batches(seed=5)
    _write(tmp_path / "flat", batches, npz=True, folders=False)
    source = DATASETS.get("imagenet32").read(str(tmp_path / "flat"))
    assert source.classes == SORTED
    for split in ("train", "val"):
        data, labels = _expected(batches, split)
        assert source.splits[split].labels.tolist() == labels
        for i in (0, 3, len(labels) - 1):
            np.testing.assert_array_equal(source.load(source.splits[split].refs[i]), _hwc(data[i]))
    manifest = convert("imagenet32", str(tmp_path / "flat"), str(tmp_path / "out"),
                       ConvertOptions(progress=False, formats=("dali",)))
    got = decoded_split(str(tmp_path / "out"), "val")
    assert got["labels"].tolist() == _expected(batches, "val")[1] and manifest["splits"]["train"]["count"] == 20
    np.testing.assert_array_equal(got["images"][5], _hwc(batches["val_data"][0][5]))


def test_map_clsloc_is_required(tmp_path):
    _write(tmp_path / "d", _batches(), npz=False, folders=False)
    clsloc = tmp_path / "devkit-elsewhere.txt"
    os.replace(tmp_path / "d" / "map_clsloc.txt", clsloc)
    with pytest.raises(UserError, match=r"map_clsloc\.txt.*devkit"):
        DATASETS.get("imagenet32").read(str(tmp_path / "d"))
    source = DATASETS.get("imagenet32").read(str(tmp_path / "d"), clsloc=str(clsloc))  # --opt clsloc=PATH
    assert source.classes == SORTED


def test_missing_batch_is_named(tmp_path):
    _write(tmp_path, _batches(), npz=False, folders=False)
    (tmp_path / "train_data_batch_7").unlink()
    with pytest.raises(UserError, match=str(tmp_path / "train_data_batch_7")):
        convert("imagenet32", str(tmp_path), str(tmp_path) + "-out", ConvertOptions(progress=False))


class Evil:
    def __reduce__(self):
        return os.mkdir, (EVIL_MARKER[0],)


class Custom:
    def __init__(self):
        self.data = np.zeros((1, 3072), np.uint8)


EVIL_MARKER = [""]


@pytest.mark.parametrize("payload", ["ordered_dict", "custom_class", "reduce_to_os_call"])
def test_pickle_with_foreign_class_is_refused(tmp_path, payload):
    _write(tmp_path, _batches(), npz=False, folders=False)
    EVIL_MARKER[0] = str(tmp_path / "code-ran")
    data, ids = _batches()["val_data"]
    obj = {"ordered_dict": lambda: collections.OrderedDict(data=data, labels=ids),
           "custom_class": Custom,
           "reduce_to_os_call": lambda: {"data": data, "labels": ids, "mean": Evil()}}[payload]()
    _dump(tmp_path / "val_data", obj)
    with pytest.raises(UserError, match=r"val_data.*refusing"):
        convert("imagenet32", str(tmp_path), str(tmp_path) + "-out", ConvertOptions(progress=False))
    assert not os.path.exists(EVIL_MARKER[0])  # never executed
    assert not (tmp_path / "out").exists()


def test_zero_based_labels_are_rejected(tmp_path):
    batches = _batches()
    batches["val_data"] = (batches["val_data"][0], [i - 1 for i in batches["val_data"][1]])
    _write(tmp_path, batches, npz=False, folders=False)
    with pytest.raises(UserError, match=r"val_data: labels outside the 1-based ids"):
        DATASETS.get("imagenet32").read(str(tmp_path))
