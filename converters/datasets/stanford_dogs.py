"""Stanford Dogs (Khosla et al., FGVC 2011): 120 ImageNet dog breeds, 12,000 train / 8,580 test photos.

Layout: ``<root>/Images/n02085620-Chihuahua/n02085620_10074.jpg ...``, ``<root>/Annotation/...`` and
``<root>/lists/{file_list,train_list,test_list}.mat`` (``lists.tar`` also extracts flat beside ``Images/``:
accepted). Each list has ``file_list`` (a cell of paths relative to ``Images/``), ``annotation_list`` and
``labels`` 1-BASED (1..120). Label = labels - 1; label k is the k-th folder of ``Images/`` in sorted order
(checked for every sample); the class name is the folder name after the wnid and its dash.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import find_base, require_root
from ..safe_load import as_list, load_mat
from ..spec import DatasetSource, DatasetSpec, SourceSplit

SPEC = DatasetSpec(
    name="stanford_dogs",
    num_classes=120,
    split_counts={"train": 12000, "test": 8580},
    resolution="photos, varied (typically ~500x375)",
    storage="jpg",
    low_res=False,
    layout="Images/<wnid>-<breed>/*.jpg, lists/{train_list,test_list}.mat",
    default_res=224,
    default_max_side=512,
)


def _list_dir(base: str) -> str:
    for folder in (os.path.join(base, "lists"), base):
        if os.path.isfile(os.path.join(folder, "train_list.mat")):
            return folder
    raise UserError(f"expected {os.path.join(base, 'lists', 'train_list.mat')} (from lists.tar; "
                    f"layout: {SPEC.layout})")


def _split(path: str, folders: List[str], base: str) -> SourceSplit:
    mat = load_mat(path)
    missing = [k for k in ("file_list", "labels") if k not in mat]
    if missing:
        raise UserError(f"{path} has no variable {missing[0]!r}; re-download lists.tar")
    files = [str(f).replace("\\", "/") for f in as_list(mat["file_list"])]
    labels = np.asarray(as_list(mat["labels"]), dtype=np.int64) - 1
    if len(files) != len(labels):
        raise UserError(f"{path}: {len(files)} files but {len(labels)} labels; re-download lists.tar")
    for name, label in zip(files, labels):
        folder = name.split("/", 1)[0]
        if not 0 <= label < len(folders) or folders[label] != folder:
            found = folders[label] if 0 <= label < len(folders) else f"none ({len(folders)} folders)"
            raise UserError(f"{path} gives {name} label {label + 1}, but sorted folder {label + 1} of "
                            f"{os.path.join(base, 'Images')} is {found}: the lists and Images/ disagree; "
                            f"re-extract images.tar and lists.tar")
    order = sorted(range(len(files)), key=files.__getitem__)
    names = [os.path.join("Images", files[i]) for i in order]
    return SourceSplit([os.path.join(base, n) for n in names], labels[order], names)


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    base = find_base(require_root(root, SPEC.name), "Images", ("stanford_dogs", "StanfordDogs"), SPEC.layout)
    images = os.path.join(base, "Images")
    folders = sorted(f for f in os.listdir(images) if os.path.isdir(os.path.join(images, f)))
    lists = _list_dir(base)
    splits = {name: _split(os.path.join(lists, f"{name}_list.mat"), folders, base) for name in ("train", "test")}
    return DatasetSource(
        spec=SPEC,
        classes=[f.split("-", 1)[1] if "-" in f else f for f in folders],
        splits=splits,
        load=load_rgb_file,
        class_order="list .mat labels (1-based) - 1 = index of the breed folder in sorted Images/ "
                    "(checked for every sample); name = folder name after '<wnid>-'",
        split_rule="official: lists/train_list.mat -> train, lists/test_list.mat -> test (paths sorted)",
        extra={"wnids": [f.split("-", 1)[0] for f in folders], "folders": folders},
    )
