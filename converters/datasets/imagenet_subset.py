"""An ImageNet class subset (commonly ImageNet-100: CMC's ``imagenet100.txt``, 126,689 train / 5,000 val).

Reader option ``classes`` (required; ``--opt classes=imagenet100.txt``): a text file of wnids, one per line
(the first word of each line is used; blank lines and ``#`` comments are skipped). The ImageNet files are
read exactly as by the ``imagenet`` reader (train folders or ``ILSVRC2012_img_train.tar``; flat val with
the devkit, ``ILSVRC2012_img_val.tar``, or ``val/<wnid>/``) and only images of the listed wnids are kept.
A pre-filtered copy holding just the subset's class folders works too.

Labels: index in the SORTED subset wnids (the order a torchvision ImageFolder of the subset gives), not
the list's order. The manifest's ``extra`` records the list as given, the sorted order, and each class's
index in the full sorted 1000-class order (``full_index``), so a 1000-class teacher's logits can be sliced
with ``logits[:, full_index]``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

from fastkd.errors import UserError

from .. import register_dataset
from ..imagenet_devkit import TRAIN_TAR, ImageNetFiles
from ..layout import require_root
from ..spec import DatasetSource
from .imagenet import SPEC as IMAGENET_SPEC
from .imagenet import imagenet_source

WNID = re.compile(r"n\d{8}$")

SPEC = dataclasses.replace(  # stored and trained as ImageNet
    IMAGENET_SPEC,
    name="imagenet_subset",
    num_classes=100,
    split_counts={"train": 126_689, "val": 5_000},  # CMC's imagenet100.txt
    resolution="variable photos, ~400x350 on average (ImageNet)",
    layout=f"ImageNet (train/<wnid>/ or {TRAIN_TAR}; flat val/ + ILSVRC2012_devkit_t12, or val/<wnid>/) "
           "+ --opt classes=LIST.txt (one wnid per line)",
)


def read_wnid_list(path: Optional[str]) -> list:
    if not path:
        raise UserError("imagenet_subset needs its class list: --opt classes=imagenet100.txt (one wnid per line)")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise UserError(f"class list {path} does not exist; pass --opt classes=PATH to a file of wnids, one per line")
    with open(path, encoding="utf-8") as f:
        rows = [(n, line.split()[0]) for n, line in enumerate(f, 1) if line.strip() and not line.lstrip().startswith("#")]
    bad = [f"line {n}: {w!r}" for n, w in rows if not WNID.match(w)]
    wnids = [w for _, w in rows]
    if bad or not wnids:
        raise UserError(f"class list {path} must hold wnids like n01440764, one per line ({'; '.join(bad[:3]) or 'empty'})")
    dupes = sorted({w for w in wnids if wnids.count(w) > 1})
    if dupes:
        raise UserError(f"class list {path} repeats {', '.join(dupes)}; each wnid must appear once")
    return wnids


@register_dataset(SPEC)
def read(root: Optional[str] = None, classes: Optional[str] = None) -> DatasetSource:
    listed = read_wnid_list(classes)
    files = ImageNetFiles(require_root(root, SPEC.name), SPEC.layout)
    present = set(files.train_wnids())
    absent = [w for w in listed if w not in present]
    if absent:
        raise UserError(f"{len(absent)} wnids of {classes} have no training images under {files.base}: "
                        f"{', '.join(absent)}; check the list or the ImageNet root")
    subset = sorted(listed)
    full = files.full_wnids()
    position = {w: i for i, w in enumerate(full)}
    full_known = files.has_devkit or len(full) == 1000
    if files.has_devkit and not set(subset) <= set(full):
        raise UserError(f"{', '.join(w for w in subset if w not in position)} of {classes} are not classes of the "
                        f"devkit's meta.mat; check the list")
    return imagenet_source(
        SPEC, files, subset, strict=False,
        class_order="index in the sorted subset wnids; full_index gives each class's index in the sorted "
                    "1000-class ImageNet order",
        split_rule="ImageNet's official train and val, keeping only images of the listed wnids",
        extra={
            "classes_file": os.path.abspath(os.path.expanduser(str(classes))),
            "listed_wnids": listed,
            "wnids": subset,
            "full_index": [position[w] for w in subset] if full_known else None,
            "full_order": "sorted leaf wnids of meta.mat" if files.has_devkit else
                          ("sorted train wnids" if full_known else "unknown: no devkit and not all 1000 train classes"),
        },
    )
