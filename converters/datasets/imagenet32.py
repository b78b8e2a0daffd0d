"""ImageNet32x32 (Chrabaszcz et al. 2017, "Downsampled ImageNet"): ImageNet-1k box-resized to 32x32 RGB.

Layout: ``<root>/train_data_batch_1 .. train_data_batch_10`` and ``<root>/val_data`` (pickles, or the same
names with ``.npz``), either flat in ``--root`` or in its ``Imagenet32_train[_npz]/`` and
``Imagenet32_val[_npz]/`` folders as the zips extract, plus ``map_clsloc.txt`` (from the ILSVRC devkit;
lines ``n02119789 1 kit_fox``) in ``--root`` (or ``--opt clsloc=PATH``). Each batch is a dict with
``data`` N x 3072 uint8 (planar R, G, B) and ``labels`` 1-BASED ids in map_clsloc.txt order. Labels are
remapped id -> wnid -> index in sorted wnids, the order torchvision/timm ImageNet weights use, so one
teacher serves ImageNet and ImageNet32. The official val split is ``val`` (there is no labelled test).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..layout import array_ref, load_array_row, planar_to_hwc, read_lines, require_root
from ..safe_load import load_batch_file
from ..spec import DatasetSource, DatasetSpec, SourceSplit

SIDE = 32
CLSLOC = "map_clsloc.txt"
TRAIN = [f"train_data_batch_{k}" for k in range(1, 11)]  # numeric order: 1, 2, ..., 10
VAL = "val_data"
DIRS = {"train": ("", "Imagenet32_train", "Imagenet32_train_npz", "train"),
        "val": ("", "Imagenet32_val", "Imagenet32_val_npz", "val")}

SPEC = DatasetSpec(
    name="imagenet32",
    num_classes=1000,
    split_counts={"train": 1281167, "val": 50000},
    resolution="32x32 RGB (box-downsampled ImageNet)",
    storage="raw",
    low_res=True,
    default_res=32,
    layout="train_data_batch_1..10, val_data (pickles or .npz; flat or in Imagenet32_{train,val}/) + map_clsloc.txt",
)


def read_images(path: str) -> np.ndarray:
    """Worker-side reader of one batch file: N x 32 x 32 x 3 uint8."""
    return planar_to_hwc(load_batch_file(path)["data"], SIDE)


def _find_batch(root: str, stem: str, split: str) -> str:
    for sub in DIRS[split]:
        for name in (stem, stem + ".npz"):
            path = os.path.join(root, sub, name)
            if os.path.isfile(path):
                return path
    looked = ", ".join(os.path.join(root, sub, stem) for sub in DIRS[split])
    raise UserError(f"expected {os.path.join(root, stem)} (or {stem}.npz; looked for {looked}; layout: {SPEC.layout})")


def _read_clsloc(path: str) -> Tuple[List[str], List[str]]:
    """map_clsloc.txt -> (wnid of id 1..K, human name of id 1..K), checked."""
    rows = {}
    for n, line in enumerate(read_lines(path, SPEC.layout), 1):
        parts = line.split(None, 2)
        if len(parts) != 3 or not parts[0].startswith("n") or not parts[1].isdigit():
            raise UserError(f"{path}:{n}: expected 'WNID ID NAME' like 'n02119789 1 kit_fox', got {line!r}")
        rows[int(parts[1])] = (parts[0], parts[2])
    if sorted(rows) != list(range(1, len(rows) + 1)) or len({w for w, _ in rows.values()}) != len(rows):
        raise UserError(f"{path}: ids must be 1..{len(rows)} with one distinct wnid each; use the devkit's map_clsloc.txt")
    return [rows[i][0] for i in range(1, len(rows) + 1)], [rows[i][1] for i in range(1, len(rows) + 1)]


def _locate_clsloc(root: str, clsloc: Optional[str]) -> str:
    if clsloc:
        if not os.path.isfile(clsloc):
            raise UserError(f"--opt clsloc={clsloc} does not exist; give the path of the devkit's {CLSLOC}")
        return clsloc
    for sub in ("", os.path.join("devkit", "data")):
        path = os.path.join(root, sub, CLSLOC)
        if os.path.isfile(path):
            return path
    raise UserError(f"expected {os.path.join(root, CLSLOC)}: ImageNet32 labels are ids in its order; copy it from the "
                    f"ILSVRC devkit (devkit/data/{CLSLOC}) into --root, or pass --opt clsloc=PATH")


@register_dataset(SPEC)
def read(root: Optional[str] = None, clsloc: Optional[str] = None) -> DatasetSource:
    root = require_root(root, SPEC.name)
    clsloc_path = _locate_clsloc(root, clsloc)
    wnid_of_id, name_of_id = _read_clsloc(clsloc_path)
    classes = sorted(wnid_of_id)
    name_of = dict(zip(wnid_of_id, name_of_id))
    index = {w: i for i, w in enumerate(classes)}
    id_to_label = np.array([-1] + [index[w] for w in wnid_of_id], dtype=np.int64)  # row 0: ids are 1-based
    splits: Dict[str, SourceSplit] = {}
    files: Dict[str, List[str]] = {}
    for split, stems in (("train", TRAIN), ("val", [VAL])):
        refs, labels, names, files[split] = [], [], [], []
        for stem in stems:
            path = _find_batch(root, stem, split)
            batch = load_batch_file(path)
            if "data" not in batch or "labels" not in batch:
                raise UserError(f"{path} lacks 'data' or 'labels' (has {', '.join(map(str, batch))}); re-download it")
            shape = np.shape(batch["data"])
            ids = np.asarray(batch["labels"], dtype=np.int64).ravel()
            if len(shape) != 2 or shape[1] != 3 * SIDE * SIDE or shape[0] != len(ids):
                raise UserError(f"{path}: data {shape} does not match {len(ids)} labels of 3x{SIDE}x{SIDE} images "
                                f"(ImageNet16/64 batches are other datasets); re-download the ImageNet32 file")
            if len(ids) and (ids.min() < 1 or ids.max() >= len(id_to_label)):
                raise UserError(f"{path}: labels outside the 1-based ids 1..{len(wnid_of_id)} of {clsloc_path}")
            del batch
            refs += [array_ref(read_images, path, i) for i in range(len(ids))]
            labels.append(id_to_label[ids])
            names += [f"{os.path.basename(path)}#{i}" for i in range(len(ids))]
            files[split].append(os.path.relpath(path, root))
        splits[split] = SourceSplit(refs, np.concatenate(labels), names)
    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits=splits,
        load=load_array_row,
        class_order="sorted wnids (torchvision/timm ImageNet order); the stored 1-based map_clsloc.txt ids are "
                    "remapped id -> wnid -> index in sorted wnids",
        split_rule="official train_data_batch_1..10 (in batch-number order) -> train, val_data -> val; "
                   "rows in file order",
        extra={"class_names": [name_of[w] for w in classes],
               "clsloc_id_to_label": id_to_label[1:].tolist(), "files": files},
    )
