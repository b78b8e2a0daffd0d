"""MNIST converter on miniature IDX files with the real names, headers and byte layout."""
from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError
from layout_tools import check_ffcv, check_split, convert_once, make_image, train_one_epoch

COUNTS = {"train": 12, "t10k": 6}
OFFICIAL = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x00000803, *images.shape) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """(root with the four official files, {split: (images N x 28 x 28, labels)})."""
    root = tmp_path_factory.mktemp("mnist")
    truth = {}
    for split, n in COUNTS.items():
        images = np.stack([make_image(7 * i + n, 28, 28, grey=True) for i in range(n)])
        labels = (np.arange(n) * 7 + 3) % 10  # not sorted, every digit position differs from the index
        (root / f"{split}-images-idx3-ubyte").write_bytes(_idx_images(images))
        (root / f"{split}-labels-idx1-ubyte").write_bytes(_idx_labels(labels))
        truth["test" if split == "t10k" else split] = (images, labels)
    return root, truth


@pytest.fixture(scope="module")
def converted(fake_mnist, tmp_path_factory):
    return convert_once(tmp_path_factory, "mnist", fake_mnist[0], per_shard=8)


def test_conversion_labels_classes_and_pixels(fake_mnist, converted):
    _, truth = fake_mnist
    out, manifest = converted
    assert manifest["classes"] == [str(d) for d in range(10)] and manifest["num_classes"] == 10
    assert list(manifest["splits"]) == ["train", "test"]
    assert manifest["image"]["storage"] == "raw" and manifest["image"]["default_res"] == 32
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 2
    for split, (images, labels) in truth.items():
        assert manifest["splits"][split]["fixed_size"] == [28, 28]
        check_split(out, manifest, split, labels, (np.repeat(im[:, :, None], 3, axis=2) for im in images), exact=True)
    check_ffcv(out, ["train", "test"])


def test_one_training_epoch(converted, tmp_path):
    summary = train_one_epoch(converted[0], str(tmp_path))
    assert summary["epochs"] == 1 and summary["top1"] is not None


def _variant_name(name: str, dot: bool, gz: bool) -> str:
    if dot:
        name = name.replace("-idx", ".idx")  # train-images.idx3-ubyte, as some mirrors write it
    return name + (".gz" if gz else "")


@pytest.mark.parametrize("dot,gz,sub", [(False, True, ""), (True, False, ""), (True, True, ""),
                                        (False, False, "MNIST/raw")])
def test_mirror_names_gzip_and_torchvision_folder(fake_mnist, tmp_path, dot, gz, sub):
    src, truth = fake_mnist
    (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for name in OFFICIAL:
        data = (src / name).read_bytes()
        (tmp_path / sub / _variant_name(name, dot, gz)).write_bytes(gzip.compress(data) if gz else data)
    source = DATASETS.get("mnist").read(str(tmp_path))
    for split, (images, labels) in truth.items():
        assert source.splits[split].labels.tolist() == labels.tolist()
        for i in (0, len(labels) - 1):
            rgb = source.load(source.splits[split].refs[i])
            assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
            np.testing.assert_array_equal(rgb, np.repeat(images[i][:, :, None], 3, axis=2))


@pytest.fixture
def mnist_copy(fake_mnist, tmp_path):
    dst = tmp_path / "mnist"
    shutil.copytree(fake_mnist[0], dst)
    return dst


def test_missing_file_is_named(mnist_copy, tmp_path):
    (mnist_copy / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match=str(mnist_copy / "t10k-labels-idx1-ubyte")):
        convert("mnist", str(mnist_copy), str(tmp_path / "out"), ConvertOptions(progress=False))
    assert not (tmp_path / "out").exists()


def test_wrong_magic_is_named(mnist_copy):
    # a labels file where the images file should be
    (mnist_copy / "train-images-idx3-ubyte").write_bytes(_idx_labels(np.arange(12) % 10))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*0x00000803.*0x00000801"):
        DATASETS.get("mnist").read(str(mnist_copy))


def test_count_mismatch_is_named(mnist_copy):
    (mnist_copy / "t10k-labels-idx1-ubyte").write_bytes(_idx_labels(np.arange(5) % 10))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte holds 6 images but .*t10k-labels-idx1-ubyte holds 5"):
        DATASETS.get("mnist").read(str(mnist_copy))


def test_truncated_file_is_named(mnist_copy):
    path = mnist_copy / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*truncated"):
        DATASETS.get("mnist").read(str(mnist_copy))
