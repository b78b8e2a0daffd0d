"""FGVC-Aircraft 2013b (Maji et al., 2013): 10,000 photos of aircraft, 100 variants / 70 families / 30 makers.

Layout: ``fgvc-aircraft-2013b/data/{images/<7-digit id>.jpg, variants.txt, families.txt, manufacturers.txt,
images_<level>_{train,val,trainval,test}.txt}``; --root may be the parent, ``fgvc-aircraft-2013b`` or ``data``.
Split files hold lines like ``0787226 Boeing 737-700``: the id is the text before the FIRST space and stays a
string (leading zeros), the label is the rest (it may contain spaces and ``/``, e.g. ``F/A-18``).
Classes are the lines of ``variants.txt`` (or families/manufacturers.txt) in file order. The bottom 20 px of
every photo are a copyright banner, cropped off on load. Option ``level``: variant (default), family or
manufacturer.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import CorruptImageError, load_rgb_file
from ..layout import find_base, read_lines, require_file, require_root
from ..spec import DatasetSource, DatasetSpec, SourceSplit

BANNER = 20  # px of copyright banner at the bottom of every image
LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
SPLITS = ("train", "val", "trainval", "test")

SPEC = DatasetSpec(
    name="aircrafts",
    num_classes=100,
    split_counts={"train": 3334, "val": 3333, "trainval": 6667, "test": 3333},
    resolution="photos, ~1-2 Mpx (bottom 20 px banner removed)",
    storage="jpg",
    low_res=False,
    layout="fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, images_variant_<split>.txt}",
    default_res=224,
    default_max_side=512,
)


def load(path: str) -> np.ndarray:
    """Decode one photo and crop off its bottom copyright banner."""
    image = load_rgb_file(path)
    if image.shape[0] <= BANNER:
        raise CorruptImageError(path, f"only {image.shape[0]} px high, no room for the {BANNER} px banner")
    return image[:-BANNER]


@register_dataset(SPEC)
def read(root: Optional[str] = None, level: str = "variant") -> DatasetSource:
    if level not in LEVELS:
        raise UserError(f"--opt level={level!r} is not one of {', '.join(LEVELS)}")
    base = find_base(require_root(root, SPEC.name), "variants.txt",
                     ("data", os.path.join("fgvc-aircraft-2013b", "data")), SPEC.layout)
    require_file(os.path.join(base, "images"), SPEC.layout)
    classes = [c.strip() for c in read_lines(os.path.join(base, LEVELS[level]), SPEC.layout)]
    index = {name: k for k, name in enumerate(classes)}
    if len(index) != len(classes):
        raise UserError(f"{os.path.join(base, LEVELS[level])} lists a class twice; re-download the dataset")
    splits = {}
    for split in SPLITS:
        path = os.path.join(base, f"images_{level}_{split}.txt")
        samples = []
        for line in read_lines(path, SPEC.layout):
            image_id, _, label = line.strip().partition(" ")
            if label not in index:
                raise UserError(f"{path}: label {label!r} of image {image_id} is not in {LEVELS[level]}")
            samples.append((image_id, index[label]))
        samples.sort()
        names = [os.path.join("images", f"{i}.jpg") for i, _ in samples]
        splits[split] = SourceSplit([os.path.join(base, n) for n in names],
                                    np.asarray([k for _, k in samples], dtype=np.int64), names)
    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits=splits,
        load=load,
        class_order=f"{LEVELS[level]} line order (line 1 -> 0)",
        split_rule=f"official images_{level}_{{train,val,trainval,test}}.txt (trainval = train + val; ids sorted)",
        extra={"level": level, "banner_cropped_px": BANNER},
    )
