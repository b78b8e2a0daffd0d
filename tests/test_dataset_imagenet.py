"""ImageNet converter on miniature copies of the official layouts (4 classes, tiny photos).

The miniature keeps the real traps: meta.mat lists the classes in ILSVRC2012_ID order (ID 1 = n02119789),
which is not sorted-wnid order, and the ground-truth IDs are not in sorted order either; one training
"JPEG" is really a PNG and one is a CMYK JPEG.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.imagenet_devkit import ImageNetFiles, load_image
from fastkd.converters.images import CorruptImageError
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

# (ILSVRC2012_ID, wnid, words) in meta.mat order, as in the real devkit: IDs 1-3 and the tench (ID 449).
META = [(1, "n02119789", "kit fox, Vulpes macrotis"), (2, "n02100735", "English setter"),
        (3, "n02110185", "Siberian husky"), (4, "n01440764", "tench, Tinca tinca")]
SORTED = ["n01440764", "n02100735", "n02110185", "n02119789"]
NAMES = ["tench, Tinca tinca", "English setter", "Siberian husky", "kit fox, Vulpes macrotis"]
TRAIN = {w: [f"{w}_{n}.JPEG" for n in (10026, 2, 10027)] for w in SORTED}  # sorted: _10026, _10027, _2
PNG_AS_JPEG, CMYK = "n01440764_10027.JPEG", "n02119789_2.JPEG"
GROUND_TRUTH = [1, 4, 2, 3, 1, 3, 4, 2]  # one ILSVRC2012_ID per val image, meta.mat order
VAL_LABELS = [3, 0, 1, 2, 3, 2, 0, 1]  # ID -> wnid -> index in SORTED, worked out by hand
TRAIN_LABELS = [c for c in range(4) for _ in range(3)]


def _val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i + 1:08d}.JPEG"


def _synsets() -> np.ndarray:
    """The meta.mat struct: N x 1 with the devkit's fields; leaves first, then one non-leaf synset."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, words, f"gloss of {w}", 0, np.zeros((1, 0)), 0, 1300) for i, w, words in META]
    rows.append((5, "n02084071", "dog, domestic dog, Canis familiaris", "a domesticated carnivore", 2,
                 np.array([[2, 3]], dtype=np.uint16), 2, 0))
    out = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        out[k, 0] = tuple(np.array([[v]], dtype=np.uint16) if isinstance(v, int) else v for v in row)
    return out


def _photo(seed: int) -> np.ndarray:
    return make_image(seed, 24 + 8 * (seed % 2), 32 - 8 * (seed % 2))  # 24x32 or 32x24


def _tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_imagenet(base, train_tar=False, val="flat", devkit=True):
    """A miniature ImageNet in ``base``. Returns {relative file name: expected RGB pixels} for train and val
    in dataset order. ``val``: "flat", "folders" (val/<wnid>/) or "tar" (ILSVRC2012_img_val.tar)."""
    base = str(base)
    os.makedirs(base, exist_ok=True)
    expect = {"train": [], "val": []}
    staging = os.path.join(base, "_staging")
    seed = 0
    for wnid in SORTED:
        for name in TRAIN[wnid]:
            seed += 1
            path = os.path.join(staging if train_tar else os.path.join(base, "train"), wnid, name)
            img = _photo(seed)
            if name == PNG_AS_JPEG:
                write_image(path, img, fmt="PNG")
            elif name == CMYK:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(img).convert("CMYK").save(path, "JPEG", quality=95)
            else:
                write_image(path, img)
    for wnid in SORTED:
        for name in sorted(TRAIN[wnid]):
            folder = os.path.join(staging if train_tar else os.path.join(base, "train"), wnid)
            with Image.open(os.path.join(folder, name)) as im:
                expect["train"].append(np.asarray(im.convert("RGB")))
    if train_tar:
        inner = [(f"{w}.tar", _tar_bytes([(n, open(os.path.join(staging, w, n), "rb").read()) for n in TRAIN[w]]))
                 for w in reversed(SORTED)]  # the download's order is not sorted either
        with open(os.path.join(base, "ILSVRC2012_img_train.tar"), "wb") as f:
            f.write(_tar_bytes(inner))
        shutil.rmtree(staging)
    val_files = []
    for i, gid in enumerate(GROUND_TRUTH):
        img = _photo(100 + i)
        wnid = META[gid - 1][1]
        rel = os.path.join("val", wnid, _val_name(i)) if val == "folders" else os.path.join("val", _val_name(i))
        write_image(os.path.join(base, rel), img)
        with Image.open(os.path.join(base, rel)) as im:
            val_files.append((rel, np.asarray(im.convert("RGB")), VAL_LABELS[i]))
    if val == "folders":  # dataset order: by wnid, then file name
        val_files.sort(key=lambda r: (r[2], r[0]))
    if val == "tar":
        members = [(os.path.basename(r[0]), open(os.path.join(base, r[0]), "rb").read()) for r in reversed(val_files)]
        with open(os.path.join(base, "ILSVRC2012_img_val.tar"), "wb") as f:
            f.write(_tar_bytes(members))
        shutil.rmtree(os.path.join(base, "val"))
    expect["val"] = [r[1] for r in val_files]
    expect["val_labels"] = [r[2] for r in val_files]
    if devkit:
        data = os.path.join(base, "ILSVRC2012_devkit_t12", "data")
        os.makedirs(data)
        scipy.io.savemat(os.path.join(data, "meta.mat"), {"synsets": _synsets()})
        with open(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
            f.write("".join(f"{g}\n" for g in GROUND_TRUTH))
    return expect


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_folders")
    return str(root), build_imagenet(root / "imagenet")  # root is the parent of imagenet/


@pytest.fixture(scope="module")
def converted(folders, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("imagenet_out") / "data")
    manifest = convert("imagenet", folders[0], out, ConvertOptions(progress=False, per_shard=5))
    return out, manifest


def test_labels_classes_and_pixels(folders, converted):
    out, manifest = converted
    expect = folders[1]
    assert manifest["classes"] == SORTED and manifest["num_classes"] == 4
    assert manifest["extra"]["class_names"] == NAMES
    assert manifest["extra"]["val_source"] == "val/ (flat)"
    assert manifest["image"]["storage"] == "jpg" and manifest["image"]["default_res"] == 224
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 12, "val": 8}
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    for split, labels in (("train", TRAIN_LABELS), ("val", VAL_LABELS)):
        got = decoded_split(out, split)
        np.testing.assert_array_equal(got["labels"], labels)
        for image, want in zip(got["images"], expect[split]):
            assert_pixels_close(image, want, exact=False)
    check_ffcv(out, ["train", "val"])


def test_png_and_cmyk_files_become_rgb(folders):
    base = os.path.join(folders[0], "imagenet", "train")
    with Image.open(os.path.join(base, "n01440764", PNG_AS_JPEG)) as im:
        assert im.format == "PNG"
    with Image.open(os.path.join(base, "n02119789", CMYK)) as im:
        assert im.mode == "CMYK"
    source = DATASETS.get("imagenet").read(folders[0])
    names = source.splits["train"].names
    for name, seed in ((f"train/n01440764/{PNG_AS_JPEG}", 3), (f"train/n02119789/{CMYK}", 11)):
        rgb = source.load(source.splits["train"].refs[names.index(name)])
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
        assert_pixels_close(rgb, _photo(seed), exact=name.endswith(PNG_AS_JPEG))


def test_one_training_epoch(converted, tmp_path):
    summary = train_one_epoch(converted[0], str(tmp_path))
    assert summary["epochs"] == 1 and summary["top1"] is not None  # evaluated on val


def test_train_tar_read_in_place_and_val_folders(folders, tmp_path):
    """The official train tar (inner tars, unsorted) and valprep-style val folders give the same samples."""
    expect = build_imagenet(tmp_path, train_tar=True, val="folders")
    assert not os.path.exists(tmp_path / "train")
    source = DATASETS.get("imagenet").read(str(tmp_path))
    train = source.splits["train"]
    assert train.names[0] == "ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG"
    assert train.names == [f"ILSVRC2012_img_train.tar:{w}.tar:{n}" for w in SORTED for n in sorted(TRAIN[w])]
    np.testing.assert_array_equal(train.labels, TRAIN_LABELS)
    for ref, want in zip(train.refs, expect["train"]):
        np.testing.assert_array_equal(source.load(ref), want)  # the very bytes of the member
    val = source.splits["val"]
    assert val.names[0] == f"val/n01440764/{_val_name(1)}"
    np.testing.assert_array_equal(val.labels, expect["val_labels"])
    np.testing.assert_array_equal(sorted(val.labels), sorted(VAL_LABELS))
    out = str(tmp_path) + "-out"  # beside --root; the refs travel to worker processes
    convert("imagenet", str(tmp_path), out, ConvertOptions(progress=False, formats=("dali",)))
    np.testing.assert_array_equal(decoded_split(out, "train")["labels"], TRAIN_LABELS)


def test_val_tar_read_in_place(tmp_path):
    expect = build_imagenet(tmp_path, val="tar")
    source = DATASETS.get("imagenet").read(str(tmp_path))
    val = source.splits["val"]
    assert val.names == [f"ILSVRC2012_img_val.tar:{_val_name(i)}" for i in range(8)]
    np.testing.assert_array_equal(val.labels, VAL_LABELS)
    for ref, want in zip(val.refs, expect["val"]):
        np.testing.assert_array_equal(source.load(ref), want)


def test_corrupt_tar_member_names_its_path(tmp_path):
    inner = _tar_bytes([("n01440764_10026.JPEG", b"\xff\xd8\xff not a jpeg at all")])
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes([("n01440764.tar", inner)]))
    (tmp_path / "val").mkdir()
    [(ref, name)] = ImageNetFiles(str(tmp_path), "test").train(["n01440764"])["n01440764"]
    assert name == "ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG"
    with pytest.raises(CorruptImageError, match="ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG"):
        load_image(ref)


def _broken(tmp_path, folders, remove):
    root = tmp_path / "imagenet"
    shutil.copytree(os.path.join(folders[0], "imagenet"), root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return str(root)


@pytest.mark.parametrize("remove,message", [
    ("ILSVRC2012_devkit_t12/data/meta.mat", "ILSVRC2012_devkit_t12/data/meta.mat"),
    ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", "ILSVRC2012_validation_ground_truth.txt"),
    ("train", "ILSVRC2012_img_train.tar"),
    ("val", "ILSVRC2012_img_val.tar"),
    ("train/n02110185", "imagenet_subset"),
])
def test_broken_layout_names_the_problem(tmp_path, folders, remove, message):
    with pytest.raises(UserError, match=message):
        DATASETS.get("imagenet").read(_broken(tmp_path, folders, remove)).splits["val"]


def test_train_folder_without_class_folders(tmp_path, folders):
    """A half-extracted download (train/ holding the inner <wnid>.tar files) is named, not read as 0 classes."""
    root = _broken(tmp_path, folders, "train")
    os.makedirs(os.path.join(root, "train"))
    open(os.path.join(root, "train", "n01440764.tar"), "wb").close()
    with pytest.raises(UserError, match="holds no <wnid> classes"):
        DATASETS.get("imagenet").read(root)
