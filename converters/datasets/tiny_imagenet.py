"""Tiny-ImageNet (CS231n): 200 ImageNet classes, 100,000 train / 10,000 val images of 64x64.

Layout (``--root`` = ``tiny-imagenet-200/`` or its parent)::

    wnids.txt                         the 200 wnids, NOT sorted
    words.txt                         ``<wnid>\\t<names>`` for all WordNet synsets (class names)
    train/<wnid>/images/<wnid>_<n>.JPEG, train/<wnid>/<wnid>_boxes.txt (boxes: not used)
    val/images/val_<n>.JPEG, val/val_annotations.txt (``val_0.JPEG\\tn03444034\\tx0\\ty0\\tx1\\ty1``)
    test/images/                      unlabelled: skipped

Labels: index in the SORTED wnids (the ImageNet convention), not wnids.txt's order. Some images are
greyscale; they decode to RGB. Stored losslessly (raw) at 64x64.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import find_base, read_lines, require_file, require_root
from ..spec import DatasetSource, DatasetSpec, SourceSplit

SPEC = DatasetSpec(
    name="tiny_imagenet",
    num_classes=200,
    split_counts={"train": 100_000, "val": 10_000},
    resolution="64x64 RGB (some greyscale)",
    storage="raw",
    low_res=True,
    default_res=64,
    layout="tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
           "val/val_annotations.txt}",
)


def _val_number(name: str):
    m = re.fullmatch(r"val_(\d+)\.JPEG", name)
    return (int(m.group(1)), name) if m else (float("inf"), name)


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    root = require_root(root, SPEC.name)
    base = find_base(root, "wnids.txt", ("tiny-imagenet-200",), SPEC.layout)
    wnids = [line.strip() for line in read_lines(os.path.join(base, "wnids.txt"), SPEC.layout)]
    classes = sorted(wnids)
    if len(set(wnids)) != len(wnids):
        raise UserError(f"{os.path.join(base, 'wnids.txt')} repeats a wnid; re-download Tiny-ImageNet")
    index = {w: i for i, w in enumerate(classes)}
    words = {}
    for line in read_lines(os.path.join(base, "words.txt"), SPEC.layout):
        wnid, _, names = line.partition("\t")
        if wnid in index:
            words[wnid] = names.strip()

    refs, labels, names = [], [], []
    for wnid in classes:
        folder = require_file(os.path.join(base, "train", wnid, "images"), SPEC.layout)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg")))
        if not files:
            raise UserError(f"{folder} holds no images; re-extract Tiny-ImageNet")
        refs += [os.path.join(folder, f) for f in files]
        labels += [index[wnid]] * len(files)
        names += [f"train/{wnid}/images/{f}" for f in files]
    train = SourceSplit(refs, np.asarray(labels, dtype=np.int64), names)

    ann_path = os.path.join(base, "val", "val_annotations.txt")
    images = require_file(os.path.join(base, "val", "images"), SPEC.layout)
    rows = []
    for n, line in enumerate(read_lines(ann_path, SPEC.layout), 1):
        parts = line.split()  # val_0.JPEG  n03444034  x0 y0 x1 y1 (tab-separated)
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"{ann_path} line {n}: {line!r} does not name an image and one of the wnids.txt classes")
        rows.append((parts[0], index[parts[1]]))
    rows.sort(key=lambda r: _val_number(r[0]))
    val = SourceSplit([os.path.join(images, r[0]) for r in rows], np.asarray([r[1] for r in rows], dtype=np.int64),
                      [f"val/images/{r[0]}" for r in rows])

    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits={"train": train, "val": val},
        load=load_rgb_file,
        class_order="index in sorted wnids (not wnids.txt order); val labels from val/val_annotations.txt",
        split_rule="official train and val; test/ has no labels and is skipped; train files sorted by name "
                   "within each class, val by image number (val_0, val_1, ...)",
        extra={"wnids": classes, "wnids_txt_order": wnids, "class_names": [words.get(w, "") for w in classes]},
    )
