"""CIFAR-100 converter on a miniature ``cifar-100-python/{train,test,meta}`` written as the originals are
(protocol-2 pickles of dicts: ``data`` N x 3072 planar RGB, ``fine_labels``, ``coarse_labels``, ``filenames``)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from layout_tools import check_ffcv, check_split, convert_once, train_one_epoch

FINE = ["apple", "aquarium_fish", "baby", "bear", "beaver"]
COARSE = ["fruit_and_vegetables", "fish", "people", "large_carnivores", "aquatic_mammals"]
FINE_TO_COARSE = [0, 1, 2, 3, 4][::-1]  # deliberately not the identity: 4, 3, 2, 1, 0
COUNTS = {"train": 12, "test": 5}


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    """(parent of cifar-100-python, {split: (data N x 3072, fine labels)})."""
    parent = tmp_path_factory.mktemp("cifar")
    base = parent / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(100)
    truth = {}
    for split, n in COUNTS.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.permutation(np.arange(n) % len(FINE))]
        _dump(base / split, {"data": data, "fine_labels": fine, "coarse_labels": [FINE_TO_COARSE[f] for f in fine],
                             "filenames": [f"img_{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch"})
        truth[split] = (data, fine)
    _dump(base / "meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})
    return parent, truth


@pytest.fixture(scope="module")
def converted(fake_cifar, tmp_path_factory):
    return convert_once(tmp_path_factory, "cifar100", fake_cifar[0], per_shard=8)


def _planar_pixel_image(row: np.ndarray) -> np.ndarray:
    """Independent of the converter: pixel (y, x) channel c sits at c*1024 + y*32 + x."""
    img = np.zeros((32, 32, 3), np.uint8)
    for c in range(3):
        for y in range(32):
            img[y, :, c] = row[c * 1024 + y * 32 : c * 1024 + y * 32 + 32]
    return img


def test_conversion_labels_classes_and_pixels(fake_cifar, converted):
    _, truth = fake_cifar
    out, manifest = converted
    assert manifest["dataset"] == "cifar100" and manifest["classes"] == FINE and manifest["num_classes"] == 5
    assert manifest["image"]["storage"] == "raw" and manifest["image"]["default_res"] == 32
    assert manifest["extra"]["fine_to_coarse"] == FINE_TO_COARSE
    assert manifest["extra"]["coarse_label_names"] == COARSE
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 2
    for split, (data, fine) in truth.items():
        assert manifest["splits"][split]["count"] == COUNTS[split]
        assert manifest["splits"][split]["fixed_size"] == [32, 32]
        check_split(out, manifest, split, fine, (_planar_pixel_image(row) for row in data), exact=True)
    check_ffcv(out, ["train", "test"])


def test_one_training_epoch(converted, tmp_path):
    summary = train_one_epoch(converted[0], str(tmp_path))
    assert summary["epochs"] == 1 and summary["top1"] is not None  # evaluated on test


def test_root_may_be_the_cifar_folder_itself(fake_cifar):
    parent, truth = fake_cifar
    source = DATASETS.get("cifar100").read(str(parent / "cifar-100-python"))
    assert source.classes == FINE
    assert source.splits["test"].labels.tolist() == truth["test"][1]
    np.testing.assert_array_equal(source.load(source.splits["test"].refs[3]), _planar_pixel_image(truth["test"][0][3]))


def test_missing_file_is_named(fake_cifar, tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name in ("train", "meta"):
        (base / name).write_bytes((fake_cifar[0] / "cifar-100-python" / name).read_bytes())
    with pytest.raises(UserError, match=str(base / "test")):
        convert("cifar100", str(tmp_path), str(tmp_path) + "-out", ConvertOptions(progress=False))
    (base / "meta").unlink()
    with pytest.raises(UserError, match="meta"):
        DATASETS.get("cifar100").read(str(tmp_path))


def test_code_in_a_pickle_is_refused(fake_cifar, tmp_path):
    import collections

    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name in ("train", "test"):
        (base / name).write_bytes((fake_cifar[0] / "cifar-100-python" / name).read_bytes())
    _dump(base / "meta", collections.OrderedDict(fine_label_names=FINE, coarse_label_names=COARSE))
    with pytest.raises(UserError, match="OrderedDict"):
        DATASETS.get("cifar100").read(str(tmp_path))
