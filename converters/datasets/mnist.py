"""MNIST handwritten digits: 10 classes, 28x28 grey (stored as RGB with three equal channels).

Layout: ``<root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or ``.gz``), as downloaded from
LeCun's page; also the mirrors' ``train-images.idx3-ubyte`` spelling (dot) and torchvision's
``<root>/MNIST/raw/`` folder. IDX: big-endian int32 magic 0x00000803 (images; dims N, rows, cols) or
0x00000801 (labels; dim N), then uint8 values. Label = the digit; split ``t10k`` is named ``test``.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import List, Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..layout import array_ref, load_array_row, require_root
from ..spec import DatasetSource, DatasetSpec, SourceSplit

IMAGES, LABELS = 0x00000803, 0x00000801
SUBDIRS = ("", "raw", os.path.join("MNIST", "raw"), "mnist")

SPEC = DatasetSpec(
    name="mnist",
    num_classes=10,
    split_counts={"train": 60000, "test": 10000},
    resolution="28x28 grey",
    storage="raw",
    low_res=True,
    default_res=32,
    layout="{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (IDX files; mirrors: train-images.idx3-ubyte)",
)


def _variants(prefix: str, kind: str, idx: str) -> List[str]:
    return [f"{prefix}-{kind}{sep}{idx}-ubyte{gz}" for gz in ("", ".gz") for sep in ("-", ".")]


def read_idx(path: str, magic: int) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its declared dims; UserError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path} cannot be read ({exc}); re-download it")
    ndim = 3 if magic == IMAGES else 1
    head = 4 + 4 * ndim
    if len(raw) < head or struct.unpack(">I", raw[:4])[0] != magic:
        found = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "a truncated header"
        raise UserError(f"{path}: IDX magic should be 0x{magic:08x} ({'images' if ndim == 3 else 'labels'}), "
                        f"found {found}; is it the right MNIST file?")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) - head != int(np.prod(dims)):
        raise UserError(f"{path}: header declares {'x'.join(map(str, dims))} = {int(np.prod(dims))} values but the "
                        f"file holds {len(raw) - head}; the file is truncated, re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def read_images(path: str) -> np.ndarray:
    """Worker-side reader: N x 28 x 28 grey (``load`` makes it RGB per sample)."""
    return read_idx(path, IMAGES)


def load(ref) -> np.ndarray:
    return np.repeat(load_array_row(ref)[:, :, None], 3, axis=2)


def _find(root: str, prefix: str, kind: str, idx: str) -> str:
    names = _variants(prefix, kind, idx)
    for sub in SUBDIRS:
        for name in names:
            path = os.path.join(root, sub, name)
            if os.path.isfile(path):
                return path
    raise UserError(f"expected {os.path.join(root, names[0])} (or {', '.join(names[1:])}; layout: {SPEC.layout}); "
                    f"is --root the folder holding the MNIST files?")


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    root = require_root(root, SPEC.name)
    splits, files = {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path = _find(root, prefix, "images", "idx3")
        labels_path = _find(root, prefix, "labels", "idx1")
        images = read_idx(images_path, IMAGES)
        labels = read_idx(labels_path, LABELS).astype(np.int64)
        if len(images) != len(labels):
            raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                            f"the files are from different releases or truncated, re-download them")
        if len(labels) and labels.max() > 9:
            raise UserError(f"{labels_path}: labels outside 0..9; is it the MNIST labels file?")
        splits[split] = SourceSplit([array_ref(read_images, images_path, i) for i in range(len(labels))], labels,
                                    [f"{os.path.basename(images_path)}#{i}" for i in range(len(labels))])
        files[split] = [os.path.relpath(images_path, root), os.path.relpath(labels_path, root)]
    return DatasetSource(
        spec=SPEC,
        classes=[str(d) for d in range(10)],
        splits=splits,
        load=load,
        class_order="the digit: '0' -> 0 ... '9' -> 9 (IDX label byte)",
        split_rule="official train (60k) and t10k (10k, named test) files, samples in file order",
        extra={"files": files, "grey": "single channel repeated to RGB"},
    )
