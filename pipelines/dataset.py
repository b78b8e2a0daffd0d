"""Opening a converted folder: reads and checks ``manifest.json`` (the converters' contract)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List

from fastkd.errors import UserError

FORMAT = "fastkd-conversion"
MANIFEST = "manifest.json"


@dataclass
class ConvertedData:
    root: str
    manifest: dict

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def classes(self) -> List[str]:
        return list(self.manifest["classes"])

    @property
    def mean(self) -> List[float]:
        return list(self.manifest["mean"])

    @property
    def std(self) -> List[float]:
        return list(self.manifest["std"])

    @property
    def storage(self) -> str:
        return self.manifest["image"]["storage"]

    @property
    def default_res(self) -> int:
        return int(self.manifest["image"]["default_res"])

    def splits(self) -> List[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> dict:
        if name not in self.manifest["splits"]:
            raise UserError(f"{self.root} has no split {name!r}; it has: {', '.join(self.splits())}")
        return self.manifest["splits"][name]

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def formats(self) -> List[str]:
        return list(self.manifest["options"]["formats"])


def open_converted(root: str) -> ConvertedData:
    """Open a folder written by `fastkd convert`; a one-line UserError for anything else."""
    root = os.path.abspath(root)
    if os.path.isdir(root + ".partial") and not os.path.isfile(os.path.join(root, MANIFEST)):
        raise UserError(f"--data {root} is an interrupted conversion (only {root}.partial exists); "
                        "run the same `fastkd convert` again")
    if not os.path.exists(root):
        raise UserError(f"--data {root} does not exist; run `fastkd convert --dataset NAME --out {root}` first")
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"--data {root} is not a fastkd conversion (no {MANIFEST}); "
                        f"create one with `fastkd convert --dataset NAME --out {root}`")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); convert the dataset again")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a fastkd manifest; convert the dataset with `fastkd convert`")
    for rel in manifest.get("checksums", {}):
        if not os.path.isfile(os.path.join(root, rel)):
            raise UserError(f"{root} is incomplete: {rel} is missing; convert the dataset again")
    return ConvertedData(os.path.abspath(root), manifest)
