"""Any dataset described by list files of ``<image path> <label>`` lines.

Layout: ``<root>/train.txt`` plus any of ``<root>/val.txt`` and ``<root>/test.txt``, one sample a line:
``relative/path.jpg 3``. The line is split on its LAST whitespace, so paths may hold spaces; the label is
a 0-based integer; paths are relative to ``<root>`` (or to the ``images_root`` reader option, itself
absolute or relative to ``<root>``). Optional ``<root>/classes.txt``: one class name a line, line i naming
label i; without it the classes are "0".."K-1" with K = the largest label + 1. Samples keep the order of
the list files. Blank lines are skipped.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from fastkd.errors import UserError

from .. import register_dataset
from ..images import load_rgb_file
from ..layout import generic_spec, read_lines, require_file, require_root
from ..spec import DatasetSource, SourceSplit

SPEC = generic_spec(  # classes: from classes.txt or the labels
    "filelist",
    "train.txt (+ val.txt, test.txt) with lines '<relative/path.jpg> <0-based label>', optional classes.txt",
)
SPLITS = ("train", "val", "test")


def _parse(path: str) -> List[Tuple[str, int, int]]:
    """[(image path as written, label, line number)] of one list file."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise UserError(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}") from None
            if label < 0:
                raise UserError(f"{path}:{lineno}: label {label} is negative; labels are 0-based")
            out.append((parts[0], label, lineno))
    return out


@register_dataset(SPEC)
def read(root: Optional[str] = None, images_root: Optional[str] = None) -> DatasetSource:
    root = require_root(root, SPEC.name)
    require_file(os.path.join(root, "train.txt"), SPEC.layout)
    images = os.path.join(root, images_root) if images_root else root  # join keeps an absolute images_root
    if not os.path.isdir(images):
        raise UserError(f"images_root {images} does not exist; give a folder (absolute, or relative to {root})")
    lists = {s: os.path.join(root, f"{s}.txt") for s in SPLITS if os.path.isfile(os.path.join(root, f"{s}.txt"))}
    parsed = {s: _parse(p) for s, p in lists.items()}
    if not parsed["train"]:
        raise UserError(f"{lists['train']} lists no samples")
    classes_path = os.path.join(root, "classes.txt")
    if os.path.isfile(classes_path):
        classes = [c.strip() for c in read_lines(classes_path, SPEC.layout)]
        source = f"line i of {classes_path} names label i"
    else:
        classes = [str(i) for i in range(max(label for rows in parsed.values() for _, label, _ in rows) + 1)]
        source = "no classes.txt: names '0'..'K-1', K = the largest label + 1"
    splits = {}
    for split, rows in parsed.items():
        refs = []
        for rel, label, lineno in rows:
            if label >= len(classes):
                raise UserError(f"{lists[split]}:{lineno}: label {label} is out of range 0..{len(classes) - 1} "
                                f"({len(classes)} classes in {classes_path}); fix the label or add the class")
            path = os.path.join(images, rel)
            if not os.path.isfile(path):
                raise UserError(f"{lists[split]}:{lineno}: image {path} is missing; restore it or fix the path "
                                f"(paths are relative to {images}; see the images_root option)")
            refs.append(path)
        splits[split] = SourceSplit(refs, np.asarray([r[1] for r in rows], dtype=np.int64), [r[0] for r in rows])
    return DatasetSource(
        spec=SPEC,
        classes=classes,
        splits=splits,
        load=load_rgb_file,
        class_order=f"the labels of the list files; {source}",
        split_rule=f"the list files {', '.join(os.path.basename(p) for p in lists.values())}, samples in line order",
        extra={"lists": {s: os.path.basename(p) for s, p in lists.items()}, "images_root": images,
               "classes_file": os.path.isfile(classes_path)},
    )
