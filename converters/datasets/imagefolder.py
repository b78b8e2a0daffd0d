"""Any class-per-folder image dataset (torchvision ``ImageFolder`` style).

Layout: ``<root>/train/<class>/<images>`` plus any of ``<root>/val/<class>/...`` and
``<root>/test/<class>/...``; or, with no split folders, ``<root>/<class>/<images>`` read as a single
``train`` split (carve a val split with ``--val-fraction``).

Classes: the sorted class folder names of ``train`` (label = index, as ``ImageFolder``'s
``class_to_idx``); a class folder in val/test that train lacks is an error. Images: files with the
extensions below (any case), found recursively inside each class folder, in sorted path order; other
files are ignored, folders starting with ``.`` are skipped, and images lying outside a class folder are
an error. Storage is JPEG unless ``ConvertOptions.storage`` says otherwise.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import generic_spec, require_root
from ..spec import DatasetSource, SourceSplit

SPEC = generic_spec(  # classes: read from the folders
    "imagefolder",
    "train/<class>/<image> (+ val/<class>/..., test/<class>/...), or <class>/<image> at the root",
)
EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTS)


def _class_dirs(folder: str) -> List[str]:
    loose = sorted(f for f in os.listdir(folder) if _is_image(f) and os.path.isfile(os.path.join(folder, f)))
    if loose:
        raise UserError(f"{os.path.join(folder, loose[0])} lies outside a class folder (layout: {SPEC.layout}); "
                        f"move the images of {folder} into <class>/ subfolders")
    return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _images(folder: str) -> List[str]:
    """Image paths under ``folder`` relative to it, recursively, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        found += [f if rel == "." else os.path.join(rel, f) for f in filenames if _is_image(f)]
    return sorted(found)


def _read_split(root: str, folder: str, classes: Optional[List[str]]) -> Tuple[List[str], SourceSplit]:
    dirs = _class_dirs(folder)
    if classes is None:
        classes = dirs
    index: Dict[str, int] = {c: i for i, c in enumerate(classes)}
    refs, labels = [], []
    for d in dirs:
        if d not in index:
            raise UserError(f"class folder {os.path.join(folder, d)} is not a class of train "
                            f"({os.path.join(root, 'train')}); add it to train or remove it")
        for rel in _images(os.path.join(folder, d)):
            refs.append(os.path.join(folder, d, rel))
            labels.append(index[d])
    split = SourceSplit(refs, np.asarray(labels, dtype=np.int64), [os.path.relpath(r, root) for r in refs])
    return classes, split


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    root = require_root(root, SPEC.name)
    present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if present and "train" not in present:
        raise UserError(f"expected {os.path.join(root, 'train')} next to {', '.join(present)}/ (layout: {SPEC.layout})")
    folders = {s: os.path.join(root, s) for s in present} if present else {"train": root}
    classes, splits = None, {}
    for split, folder in folders.items():
        classes, splits[split] = _read_split(root, folder, classes)
    if not classes:
        raise UserError(f"no class folders in {folders['train']} (layout: {SPEC.layout})")
    if not len(splits["train"]):
        raise UserError(f"no images ({', '.join(EXTS)}) in the class folders of {folders['train']}")
    for split, data in splits.items():
        if not len(data):
            raise UserError(f"no images in the class folders of {folders[split]}; fill it or remove the folder")
    single = not present
    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits=splits,
        load=load_rgb_file,
        class_order="sorted class folder names of train (as torchvision ImageFolder)",
        split_rule=("class folders at the root: a single train split" if single else
                    f"split folders {', '.join(present)}; images in sorted path order within each class"),
        extra={"layout": "class folders at the root" if single else "split folders", "extensions": list(EXTS)},
    )
