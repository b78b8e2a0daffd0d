"""Oxford Flowers-102 (Nilsback & Zisserman, ICVGIP 2008): 8,189 photos of 102 flower species.

Layout: ``<root>/jpg/image_00001.jpg .. image_08189.jpg``, ``<root>/imagelabels.mat`` (``labels``: 1 x 8189,
values 1..102, entry i is the class of image i+1) and ``<root>/setid.mat`` (``trnid`` 1,020, ``valid`` 1,020,
``tstid`` 6,149: 1-based image ids). torchvision's ``flowers-102/`` folder holds the same files.
Label = labels[id - 1] - 1. No class-name file ships with the dataset, so classes are named
``class_001 .. class_102`` by label. Some photos are greyscale (decoded to RGB).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import find_base, require_file, require_root
from ..safe_load import as_list, load_mat
from ..spec import DatasetSource, DatasetSpec, SourceSplit

CLASSES = 102
SPLITS = (("train", "trnid"), ("val", "valid"), ("test", "tstid"))

SPEC = DatasetSpec(
    name="flowers102",
    num_classes=CLASSES,
    split_counts={"train": 1020, "val": 1020, "test": 6149},
    resolution="photos, shorter side 500 px",
    storage="jpg",
    low_res=False,
    layout="jpg/image_00001.jpg .. image_08189.jpg, imagelabels.mat, setid.mat",
    default_res=224,
    default_max_side=512,
)


def _vector(path: str, key: str) -> np.ndarray:
    mat = load_mat(path)
    if key not in mat:
        raise UserError(f"{path} has no variable {key!r}; re-download it")
    return np.asarray(as_list(mat[key]), dtype=np.int64)


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    base = find_base(require_root(root, SPEC.name), "imagelabels.mat", ("flowers-102", "flowers102"), SPEC.layout)
    labels_path = os.path.join(base, "imagelabels.mat")
    setid = require_file(os.path.join(base, "setid.mat"), SPEC.layout)
    require_file(os.path.join(base, "jpg"), SPEC.layout)
    labels = _vector(labels_path, "labels")
    if labels.size and (labels.min() < 1 or labels.max() > CLASSES):
        raise UserError(f"{labels_path}: labels outside 1..{CLASSES}; re-download it")
    splits = {}
    for split, key in SPLITS:
        ids = np.sort(_vector(setid, key))
        if ids.size and (ids.min() < 1 or ids.max() > labels.size):
            raise UserError(f"{setid}: {key} has image ids outside 1..{labels.size} (imagelabels.mat); "
                            f"the two files come from different downloads")
        names = [os.path.join("jpg", f"image_{i:05d}.jpg") for i in ids]
        splits[split] = SourceSplit([os.path.join(base, n) for n in names], labels[ids - 1] - 1, names)
    return DatasetSource(
        spec=SPEC,
        classes=[f"class_{k:03d}" for k in range(1, CLASSES + 1)],
        splits=splits,
        load=load_rgb_file,
        class_order="imagelabels.mat label (1-based) - 1; no official names ship, so label k is named "
                    "class_{k+1:03d} (class_001 .. class_102)",
        split_rule="official setid.mat: trnid -> train, valid -> val, tstid -> test (ids sorted)",
        extra={"label_file": "imagelabels.mat", "split_file": "setid.mat"},
    )
