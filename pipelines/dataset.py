"""A converted folder as the pipelines see it: its manifest's fields, checked on opening."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

from fastkd.converted import ShardReader, check_sizes, read_manifest
from fastkd.errors import UserError


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
        from fastkd.converted import MANIFEST
        from fastkd.safe_paths import inside

        return inside(self.root, rel, "file", os.path.join(self.root, MANIFEST))

    def formats(self) -> List[str]:
        return list(self.manifest["options"]["formats"])

    def shard_reader(self, split: str) -> ShardReader:
        """Random access to ``split``'s samples in the DALI shards, through their sample table."""
        shards = self.split(split)["dali"]["shards"]
        return ShardReader(self.path(f"dali/{split}"), [s.rsplit("/", 1)[1] for s in shards])


def open_converted(root: str) -> ConvertedData:
    """Open a folder written by `fastkd convert`: format version and every file's size checked (a one-line
    UserError for anything else; ``fastkd.converted``)."""
    root = os.path.abspath(root)
    manifest = read_manifest(root)
    check_sizes(root, manifest)
    return ConvertedData(root, manifest)
