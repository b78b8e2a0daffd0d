"""FGVC-Aircraft 2013b: a miniature official layout -> conversion, string ids, spaced labels, banner crop, errors."""
from __future__ import annotations

import os

import pytest

from fastkd.converters.convert import ConvertOptions, convert
from fastkd.converters.images import load_rgb_file
from fastkd.errors import UserError
from layout_tools import assert_pixels_close, check_ffcv, decoded_split, make_image, train_one_epoch, write_image

# variant -> (family, manufacturer); variants.txt order is NOT sorted, and names hold spaces and "/"
VARIANTS = {"737-700": ("Boeing 737", "Boeing"), "Cessna 172": ("Cessna 172", "Cessna"),
            "F/A-18": ("F/A-18", "McDonnell Douglas"), "A320": ("A320", "Airbus")}
FAMILIES = ["Boeing 737", "A320", "Cessna 172", "F/A-18"]
MAKERS = ["Airbus", "Boeing", "Cessna", "McDonnell Douglas"]
ORDER = list(VARIANTS)
# ids with leading zeros (7 digits): their image files are named with the zeros
SPLITS = {
    "train": [("0034309", "737-700"), ("0787226", "Cessna 172"), ("1025794", "F/A-18"), ("0000123", "A320"),
              ("2223333", "737-700"), ("0062765", "Cessna 172"), ("1960120", "F/A-18"), ("0451231", "A320")],
    "val": [("0100001", "A320"), ("0009999", "F/A-18"), ("1500000", "Cessna 172"), ("0200002", "737-700")],
    "test": [("0777777", "F/A-18"), ("0012345", "737-700"), ("1234567", "A320"), ("0333333", "Cessna 172")],
}
SPLITS["trainval"] = SPLITS["train"] + SPLITS["val"]


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.fixture
def aircraft(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    pics = {}
    for n, (image_id, _) in enumerate(SPLITS["trainval"] + SPLITS["test"]):
        path = str(data / "images" / f"{image_id}.jpg")
        write_image(path, make_image(n, 44 + 3 * (n % 3), 40 + n % 3))
        pics[image_id] = load_rgb_file(path)  # the pixels the converter reads
    _write(str(data / "variants.txt"), ORDER)
    _write(str(data / "families.txt"), FAMILIES)
    _write(str(data / "manufacturers.txt"), MAKERS)
    for split, entries in SPLITS.items():
        for level, name in (("variant", lambda v: v), ("family", lambda v: VARIANTS[v][0]),
                            ("manufacturer", lambda v: VARIANTS[v][1])):
            _write(str(data / f"images_{level}_{split}.txt"), [f"{i} {name(v)}" for i, v in entries])
    return data, pics


def test_aircraft_converts(aircraft, tmp_path):
    data, pics = aircraft
    out = str(tmp_path) + "-out"  # beside the dataset, not inside --root
    manifest = convert("aircrafts", str(tmp_path), out, ConvertOptions(progress=False, per_shard=3))  # the parent
    assert manifest["classes"] == ORDER and manifest["extra"]["level"] == "variant"
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 8, "val": 4, "trainval": 12, "test": 4}
    assert len(manifest["splits"]["train"]["dali"]["shards"]) == 3
    for split, entries in SPLITS.items():
        ordered = sorted(entries)  # by id string: "0000123" first
        got = decoded_split(out, split)
        assert got["labels"].tolist() == [ORDER.index(v) for _, v in ordered]
        for image, (image_id, _) in zip(got["images"], ordered):
            src = pics[image_id]
            assert image.shape == (src.shape[0] - 20, src.shape[1], 3)  # the banner is gone
            assert_pixels_close(image, src[:-20], exact=False)
    check_ffcv(out, list(SPLITS))
    train_one_epoch(out, str(tmp_path))


@pytest.mark.parametrize("level,classes,index", [("family", FAMILIES, 0), ("manufacturer", MAKERS, 1)])
def test_levels(aircraft, tmp_path, level, classes, index):
    data, _ = aircraft
    base = str(data.parent) if level == "family" else str(data)  # fgvc-aircraft-2013b/ or data/ as --root
    out = str(tmp_path / "out")
    opts = ConvertOptions(formats=("dali",), progress=False, extra={"level": level})
    manifest = convert("aircrafts", base, out, opts)
    assert manifest["classes"] == classes and manifest["num_classes"] == 4
    assert decoded_split(out, "test")["labels"].tolist() == [classes.index(VARIANTS[v][index])
                                                             for _, v in sorted(SPLITS["test"])]


def test_broken_layouts(aircraft, tmp_path):
    data, _ = aircraft
    os.remove(data / "images_variant_test.txt")
    opts = ConvertOptions(progress=False)
    with pytest.raises(UserError, match="images_variant_test.txt"):
        convert("aircrafts", str(data), str(tmp_path / "out"), opts)
    with pytest.raises(UserError, match="variants.txt"):
        convert("aircrafts", str(data / "images"), str(tmp_path / "out"), opts)
    with pytest.raises(UserError, match="level"):
        convert("aircrafts", str(data), str(tmp_path / "out"), ConvertOptions(progress=False, extra={"level": "model"}))
    _write(str(data / "images_variant_test.txt"), ["0777777 F/A-18E"])
    with pytest.raises(UserError, match="F/A-18E"):
        convert("aircrafts", str(data), str(tmp_path / "out"), opts)
    assert not os.path.exists(tmp_path / "out")
