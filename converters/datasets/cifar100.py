"""CIFAR-100 (python version): 100 fine classes in 20 coarse superclasses, 32x32 RGB.

Layout: ``<root>/cifar-100-python/{train,test,meta}`` (or ``--root`` is ``cifar-100-python`` itself),
as extracted from ``cifar-100-python.tar.gz``. ``train`` and ``test`` are Python-2 pickles (read with
``latin1`` by the restricted unpickler) of dicts: ``data`` N x 3072 uint8 (planar R, G, B of 32x32),
``fine_labels`` 0..99, ``coarse_labels`` 0..19, ``filenames``. ``meta`` holds ``fine_label_names`` and
``coarse_label_names``. Label = fine label (already 0-based); the fine -> coarse map goes to the manifest.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..layout import array_ref, find_base, load_array_row, planar_to_hwc, require_file, require_root
from ..safe_load import load_batch_file
from ..spec import DatasetSource, DatasetSpec, SourceSplit

SIDE = 32
FOLDER = "cifar-100-python"

SPEC = DatasetSpec(
    name="cifar100",
    num_classes=100,
    split_counts={"train": 50000, "test": 10000},
    resolution="32x32 RGB",
    storage="raw",
    low_res=True,
    default_res=32,
    layout="cifar-100-python/{train,test,meta} (Python pickles: data N x 3072 planar RGB, fine_labels, coarse_labels)",
)


def read_images(path: str) -> np.ndarray:
    """Worker-side reader of one pickle: N x 32 x 32 x 3 uint8."""
    return planar_to_hwc(load_batch_file(path)["data"], SIDE)


def _field(batch: Dict, key: str, path: str):
    if key not in batch:
        raise UserError(f"{path} has no {key!r} entry (it has {', '.join(map(str, batch))}); is it the CIFAR-100 "
                        f"python version? re-download cifar-100-python.tar.gz")
    return batch[key]


def _names(values) -> List[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    root = require_root(root, SPEC.name)
    base = find_base(root, "meta", [FOLDER], SPEC.layout)
    meta_path = os.path.join(base, "meta")
    meta = load_batch_file(meta_path)
    classes = _names(_field(meta, "fine_label_names", meta_path))
    coarse_names = _names(_field(meta, "coarse_label_names", meta_path))
    fine_to_coarse: List[Optional[int]] = [None] * len(classes)
    splits: Dict[str, SourceSplit] = {}
    for split in ("train", "test"):
        path = require_file(os.path.join(base, split), SPEC.layout)
        batch = load_batch_file(path)
        data = np.asarray(_field(batch, "data", path))
        fine = np.asarray(_field(batch, "fine_labels", path), dtype=np.int64).ravel()
        coarse = np.asarray(_field(batch, "coarse_labels", path), dtype=np.int64).ravel()
        if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or not (len(fine) == len(coarse) == len(data)):
            raise UserError(f"{path}: data {data.shape} does not match {len(fine)} labels of 3x{SIDE}x{SIDE} images; "
                            f"re-download cifar-100-python.tar.gz")
        if len(fine) and (fine.min() < 0 or fine.max() >= len(classes)):
            raise UserError(f"{path}: fine_labels outside 0..{len(classes) - 1} (meta lists {len(classes)} classes)")
        if len(coarse) and (coarse.min() < 0 or coarse.max() >= len(coarse_names)):
            raise UserError(f"{path}: coarse_labels outside 0..{len(coarse_names) - 1}")
        for f, c in sorted(set(zip(fine.tolist(), coarse.tolist()))):
            if fine_to_coarse[f] not in (None, c):
                raise UserError(f"{path}: fine class {classes[f]!r} appears under two coarse classes; re-download")
            fine_to_coarse[f] = c
        splits[split] = SourceSplit([array_ref(read_images, path, i) for i in range(len(fine))], fine,
                                    [f"{split}#{i}" for i in range(len(fine))])
    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits=splits,
        load=load_array_row,
        class_order="fine_labels as stored (0-based); names from meta fine_label_names in label order",
        split_rule="official train (50k) and test (10k) pickles, samples in file row order",
        extra={"coarse_label_names": coarse_names, "fine_to_coarse": fine_to_coarse},
    )
