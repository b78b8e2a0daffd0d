"""VGGFace2 (Cao et al., 2018): 9,131 identities; 8,631 train, 500 test, loose face crops.

Layout: ``<root>/train/n000002/0001_01.jpg``, ``<root>/test/...``, ``train_list.txt`` / ``test_list.txt``
(lines ``n000002/0001_01.jpg``) and ``identity_meta.csv`` (``Class_ID, Name, Sample_Num, Flag, Gender``,
names quoted, some holding commas). ``<root>`` may also be the parent of a ``vggface2/`` folder.

Labels: the TRAIN identity folders in sorted order (n000002 -> 0, ...); class names from
``identity_meta.csv`` (the id when it is missing). The official test identities are DISJOINT from the
train ones, so they cannot be classified and are not converted (their count goes to the manifest).
Instead a classification ``test`` split is held out of each training identity: ``round(holdout * n)``
of its n images (at least 1 when n >= 2, none when n == 1), chosen by
``numpy.random.default_rng([seed, identity index]).permutation(n)`` over its images in sorted order;
both splits keep the sorted order. Reader options: ``holdout`` (default 0.1) and ``seed`` (default 0).
Files come from ``train_list.txt`` (the official list; every listed file must exist) or, without it,
from scanning ``train/``.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import find_base, read_lines, require_root
from ..spec import DatasetSource, DatasetSpec, SourceSplit

SPEC = DatasetSpec(
    name="vggface2",
    num_classes=8631,
    split_counts={"train": 3141890, "test": 169396},  # official lists; the converted test is held out of train
    resolution="loose face crops, ~137x180 on average (varies)",
    storage="jpg",
    low_res=False,
    default_res=112,
    default_max_side=256,
    layout="train/<id>/<nnnn_nn>.jpg, test/<id>/..., train_list.txt, test_list.txt, identity_meta.csv",
)
EXTS = (".jpg", ".jpeg", ".png")


def _list_files(base: str, split_dir: str) -> Dict[str, List[str]]:
    """{identity: sorted file names} from ``train_list.txt`` (checked against disk) or a folder scan."""
    list_path = os.path.join(base, "train_list.txt")
    files: Dict[str, List[str]] = {}
    if not os.path.isfile(list_path):
        for ident in sorted(os.listdir(split_dir)):
            folder = os.path.join(split_dir, ident)
            if os.path.isdir(folder) and not ident.startswith("."):
                files[ident] = sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTS))
        return {k: v for k, v in files.items() if v}
    on_disk: Dict[str, set] = {}
    for lineno, line in enumerate(read_lines(list_path, SPEC.layout), 1):
        ident, sep, name = line.strip().partition("/")
        if not sep or not ident or not name:
            raise UserError(f"{list_path}:{lineno}: expected a line like n000002/0001_01.jpg, got {line!r}")
        if ident not in on_disk:
            folder = os.path.join(split_dir, ident)
            on_disk[ident] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if name.split("/")[0] not in on_disk[ident]:
            raise UserError(f"{os.path.join(split_dir, ident, name)} is listed in {list_path}:{lineno} but missing "
                            f"on disk; restore it (re-extract the train archive)")
        files.setdefault(ident, []).append(name)
    return {k: sorted(set(v)) for k, v in files.items()}


def _names(base: str) -> Dict[str, str]:
    path = os.path.join(base, "identity_meta.csv")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [r for r in csv.reader(f, skipinitialspace=True) if r]
    except UnicodeDecodeError:  # not UTF-8: every byte is a latin-1 character
        with open(path, encoding="latin-1", newline="") as f:
            rows = [r for r in csv.reader(f, skipinitialspace=True) if r]
    if rows and rows[0][0].strip() == "Class_ID":
        rows = rows[1:]
    return {r[0].strip(): r[1].strip() for r in rows if len(r) >= 2}


def _official_test(base: str) -> Dict[str, Optional[int]]:
    path = os.path.join(base, "test_list.txt")
    if os.path.isfile(path):
        lines = read_lines(path, SPEC.layout)
        return {"identities": len({ln.strip().split("/")[0] for ln in lines}), "images": len(lines)}
    folder = os.path.join(base, "test")
    if os.path.isdir(folder):
        return {"identities": sum(os.path.isdir(os.path.join(folder, d)) for d in os.listdir(folder)), "images": None}
    return {"identities": None, "images": None}


@register_dataset(SPEC)
def read(root: Optional[str] = None, holdout: float = 0.1, seed: int = 0) -> DatasetSource:
    root = require_root(root, SPEC.name)
    if not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise UserError(f"vggface2 holdout={holdout!r} must be a fraction between 0 and 1 (e.g. --opt holdout=0.1)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"vggface2 seed={seed!r} must be a non-negative integer (e.g. --opt seed=0)")
    base = find_base(root, "train", ("vggface2", "VGGFace2", "vgg_face2"), SPEC.layout)
    split_dir = os.path.join(base, "train")
    if not os.path.isdir(split_dir):
        raise UserError(f"expected the folder {split_dir} (layout: {SPEC.layout})")
    files = _list_files(base, split_dir)
    if not files:
        raise UserError(f"no images found under {split_dir}/<id>/ (layout: {SPEC.layout})")
    ids = sorted(files)
    names = _names(base)
    parts = {"train": ([], []), "test": ([], [])}
    for label, ident in enumerate(ids):
        n = len(files[ident])
        k = max(int(round(holdout * n)), 1) if n >= 2 else 0
        held = set(np.random.default_rng([seed, label]).permutation(n)[:k].tolist())
        for i, name in enumerate(files[ident]):
            rel, labels = parts["test" if i in held else "train"]
            rel.append(f"{ident}/{name}")
            labels.append(label)
    splits = {
        split: SourceSplit([os.path.join(split_dir, r) for r in rel], np.asarray(labels, dtype=np.int64),
                           [f"train/{r}" for r in rel])
        for split, (rel, labels) in parts.items()
    }
    official_test = _official_test(base)
    return DatasetSource(
        spec=SPEC,
        classes=[names.get(i, i) for i in ids],
        splits=splits,
        load=load_rgb_file,
        class_order="train identity folders in sorted order (n000002 -> 0, ...); names from identity_meta.csv "
                    "(the id when missing)",
        split_rule=f"train and test both come from the official TRAIN identities: per identity, round({holdout:g} * n) "
                   f"of its n images (at least 1 when n >= 2, none when n == 1), chosen by numpy "
                   f"default_rng([{seed}, identity index]).permutation(n) over its sorted images -> test, the rest "
                   f"-> train; both splits in sorted order. The official test identities are disjoint from train "
                   f"and are not converted",
        extra={"identity_ids": ids, "holdout": holdout, "seed": seed,
               "file_list": "train_list.txt" if os.path.isfile(os.path.join(base, "train_list.txt")) else "folder scan",
               "official_test_identities": official_test["identities"],
               "official_test_images": official_test["images"],
               "official_test_note": "official test identities are disjoint from train: not converted"},
    )
