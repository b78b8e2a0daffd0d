"""Stanford Cars (Krause et al., 3DRR 2013): 196 car models, 8,144 train / 8,041 test photos.

Devkit release (also torchvision's ``stanford_cars`` folder):
  ``<root>/cars_train/00001.jpg ...``, ``<root>/cars_test/00001.jpg ...``,
  ``<root>/devkit/{cars_meta.mat, cars_train_annos.mat, cars_test_annos.mat}`` and
  ``<root>/cars_test_annos_withlabels.mat`` (or in ``devkit/``): the devkit's test file has no labels.
Alternative release: ``<root>/car_ims/000001.jpg ...`` + ``<root>/cars_annos.mat`` (one struct for all
images with ``relative_im_path`` and a ``test`` flag 0/1, plus the ``class_names`` variable).
Each ``annotations`` entry has bbox_x1, bbox_y1, bbox_x2, bbox_y2 (1-based, inclusive pixels) and ``class``
1-BASED (1..196): label = class - 1, so class k names ``class_names[k]``. Kaggle's nested mirror
(``cars_train/cars_train/*.jpg``) is accepted too. Option ``crop_bbox``: crop each image to its box.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import require_file, require_root
from ..safe_load import as_list, load_mat, mat_records
from ..spec import DatasetSource, DatasetSpec, SourceSplit

SPEC = DatasetSpec(
    name="cars",
    num_classes=196,
    split_counts={"train": 8144, "test": 8041},
    resolution="photos, varied (typically ~700x480)",
    storage="jpg",
    low_res=False,
    layout="cars_train/*.jpg, cars_test/*.jpg, devkit/{cars_meta,cars_train_annos}.mat, "
           "cars_test_annos_withlabels.mat (or car_ims/*.jpg + cars_annos.mat)",
    default_res=224,
    default_max_side=512,
)

SUBDIRS = ("stanford_cars", "car_data")
Box = Optional[Tuple[int, int, int, int]]


def load(ref: Tuple[str, Box]) -> np.ndarray:
    """Decode one photo; with a box (x1, y1, x2, y2; 1-based inclusive) crop to it, clipped to the image."""
    path, box = ref
    image = load_rgb_file(path)
    if box is None:
        return image
    x1, y1, x2, y2 = box
    crop = image[max(y1 - 1, 0):y2, max(x1 - 1, 0):x2]
    return np.ascontiguousarray(crop) if crop.size else image  # a degenerate box keeps the whole photo


def _find_release(root: str) -> Tuple[str, str]:
    for sub in ("", *SUBDIRS):
        base = os.path.join(root, sub)
        if os.path.isfile(os.path.join(base, "devkit", "cars_meta.mat")):
            return base, "devkit"
        if os.path.isfile(os.path.join(base, "cars_annos.mat")):
            return base, "car_ims"
    raise UserError(f"expected {os.path.join(root, 'devkit', 'cars_meta.mat')} (devkit release) or "
                    f"{os.path.join(root, 'cars_annos.mat')} (car_ims release); layout: {SPEC.layout}")


def _image_dir(base: str, name: str) -> str:
    folder = require_file(os.path.join(base, name), SPEC.layout)
    nested = os.path.join(folder, name)  # Kaggle mirror: cars_train/cars_train/*.jpg
    return nested if os.path.isdir(nested) else folder


def _variable(mat: dict, key: str, path: str) -> list:
    if key not in mat:
        raise UserError(f"{path} has no variable {key!r}; re-download the Stanford Cars devkit")
    return [str(v) for v in as_list(mat[key])]


def _split(records, path, folder, base, key, crop_bbox, n_classes):
    samples = []
    for r in records:
        if "class" not in r:
            raise UserError(f"{path} has no class labels (the devkit's cars_test_annos.mat has none); "
                            f"use cars_test_annos_withlabels.mat")
        label = int(r["class"]) - 1
        if not 0 <= label < n_classes:
            raise UserError(f"{path}: class {label + 1} outside 1..{n_classes}; re-download the annotations")
        box = tuple(int(r[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")) if crop_bbox else None
        samples.append((str(r[key]), label, box))
    samples.sort(key=lambda s: s[0])
    refs = [(os.path.join(folder, name), box) for name, _, box in samples]
    return SourceSplit(refs, np.asarray([s[1] for s in samples], dtype=np.int64),
                       [os.path.relpath(p, base) for p, _ in refs])


@register_dataset(SPEC)
def read(root: Optional[str] = None, crop_bbox: bool = False) -> DatasetSource:
    if not isinstance(crop_bbox, bool):
        raise UserError(f"--opt crop_bbox={crop_bbox!r} must be true or false")
    base, release = _find_release(require_root(root, SPEC.name))
    if release == "devkit":
        meta = os.path.join(base, "devkit", "cars_meta.mat")
        classes = _variable(load_mat(meta), "class_names", meta)
        train = os.path.join(base, "devkit", "cars_train_annos.mat")
        test = next((p for p in (os.path.join(base, "cars_test_annos_withlabels.mat"),
                                 os.path.join(base, "devkit", "cars_test_annos_withlabels.mat")) if os.path.isfile(p)),
                    None)
        if test is None:
            raise UserError(f"expected {os.path.join(base, 'cars_test_annos_withlabels.mat')} (the test labels; "
                            f"devkit/cars_test_annos.mat has none): download it beside devkit/")
        splits = {name: _split(mat_records(load_mat(path), "annotations", path), path, _image_dir(base, folder),
                               base, "fname", crop_bbox, len(classes))
                  for name, path, folder in (("train", train, "cars_train"), ("test", test, "cars_test"))}
    else:
        path = os.path.join(base, "cars_annos.mat")
        mat = load_mat(path)
        classes = _variable(mat, "class_names", path)
        records = mat_records(mat, "annotations", path)
        require_file(os.path.join(base, "car_ims"), SPEC.layout)
        if any("test" not in r for r in records):
            raise UserError(f"{path} has no 'test' flag in its annotations; re-download cars_annos.mat")
        splits = {name: _split([r for r in records if int(r["test"]) == flag], path, base, base,
                               "relative_im_path", crop_bbox, len(classes))
                  for name, flag in (("train", 0), ("test", 1))}
    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits=splits,
        load=load,
        class_order="annotation class (1-based) - 1: class_names order of "
                    + ("devkit/cars_meta.mat" if release == "devkit" else "cars_annos.mat"),
        split_rule="official: cars_train_annos.mat -> train, cars_test_annos_withlabels.mat -> test"
        if release == "devkit" else "official: cars_annos.mat test flag 0 -> train, 1 -> test",
        extra={"release": release, "crop_bbox": crop_bbox,
               "bbox": "cropped to [y1-1:y2, x1-1:x2] (1-based inclusive box, clipped)" if crop_bbox else "not used"},
    )
