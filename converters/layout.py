"""Helpers for reading official layouts: locating the root, requiring files, array-backed samples, and the
spec shared by the generic readers."""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from fastkd.errors import UserError

from .spec import DatasetSpec


def generic_spec(name: str, layout: str) -> DatasetSpec:
    """The spec of a reader for any dataset in a generic layout (imagefolder, filelist): the classes (0 = any),
    splits and sizes all come from the files; photos stored as JPEG, trained at 224 px by default."""
    return DatasetSpec(name=name, num_classes=0, split_counts={}, resolution="any", storage="jpg", low_res=False,
                       layout=layout, default_res=224, default_max_side=512)


def require_root(root: Optional[str], dataset: str) -> str:
    if not root:
        raise UserError(f"--root is required for {dataset}: the folder holding its official layout "
                        f"(see `fastkd list datasets`)")
    if not os.path.isdir(root):
        raise UserError(f"--root {root} does not exist or is not a folder")
    return os.path.abspath(root)


def find_base(root: str, marker: str, subdirs: Iterable[str], layout: str) -> str:
    """The folder under ``root`` (itself, or one of ``subdirs``) that holds ``marker``."""
    for sub in ("", *subdirs):
        base = os.path.join(root, sub) if sub else root
        if os.path.exists(os.path.join(base, marker)):
            return base
    tried = ", ".join(os.path.join(root, s, marker) if s else os.path.join(root, marker) for s in ("", *subdirs))
    raise UserError(f"expected {marker} (layout: {layout}); looked for {tried}")


def require_file(path: str, layout: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"expected {path} (layout: {layout}); is --root the right folder?")
    return path


def read_lines(path: str, layout: str) -> list:
    require_file(path, layout)
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n\r") for line in f if line.strip()]


# ---- samples that live inside arrays (CIFAR, MNIST, ImageNet32 batch files) -----------------------
# A reference is (reader, path, row): ``reader(path)`` returns an (N, H, W, 3) uint8 array and is
# cached per worker process, one file at a time (workers take samples in file order).

_CACHE: dict = {}


def array_ref(reader: Callable[[str], np.ndarray], path: str, row: int) -> Tuple:
    return (reader, path, int(row))


def load_array_row(ref: Tuple) -> np.ndarray:
    reader, path, row = ref
    key = (reader, path)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = reader(path)
    return _CACHE[key][row]


def planar_to_hwc(data: np.ndarray, side: int) -> np.ndarray:
    """N x (3*side*side) planar R,G,B rows (CIFAR, ImageNet32) -> N x side x side x 3."""
    return np.ascontiguousarray(np.asarray(data, dtype=np.uint8).reshape(-1, 3, side, side).transpose(0, 2, 3, 1))
