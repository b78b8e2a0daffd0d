"""What a dataset converter declares: its spec and the samples it reads from the official layout."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset, as published (shown by `fastkd list datasets`)."""

    name: str
    num_classes: int
    split_counts: Dict[str, int]  # official sample count per split
    resolution: str  # human-readable, e.g. "92x112 grey"
    storage: str  # "jpg" for photos, "raw" for small images stored losslessly
    low_res: bool  # True when models should use the low-resolution stem
    layout: str  # the official on-disk layout the converter reads
    default_res: int = 224  # training resolution `fastkd train` uses unless --res is given
    default_max_side: Optional[int] = None  # resize photos so the longer side is at most this


@dataclass
class SourceSplit:
    """One split read from the official layout: picklable sample references plus labels."""

    refs: List[object]  # each passed to DatasetSource.load in a worker process
    labels: np.ndarray  # int64, 0-based
    names: List[str]  # a stable per-sample name (relative path) for error messages and the manifest

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class DatasetSource:
    """A dataset read from its official layout.

    ``load`` must be a module-level function (it runs in worker processes) that returns an
    RGB ``uint8`` array of shape (H, W, 3) for a sample reference.
    """

    spec: DatasetSpec
    classes: List[str]
    splits: Dict[str, SourceSplit]
    load: Callable[[object], np.ndarray]
    class_order: str  # how label indices were assigned
    split_rule: str  # how the splits were formed
    extra: Dict[str, object] = field(default_factory=dict)  # recorded verbatim in the manifest


def carve_val(source: DatasetSource, fraction: float, seed: int) -> DatasetSource:
    """Hold out a seeded, class-stratified ``val`` split from ``train`` (for datasets without one).

    In each class, ``round(fraction * n)`` samples (at least one when the class has two or more) chosen
    by a permutation seeded with ``(seed, class)`` move to ``val``; both splits keep the source order.
    """
    from fastkd.errors import UserError

    if "val" in source.splits:
        raise UserError(f"{source.spec.name} already has an official val split; drop --val-fraction")
    if not 0 < fraction < 1:
        raise UserError(f"--val-fraction {fraction} must be between 0 and 1")
    train = source.splits["train"]
    held = np.zeros(len(train), dtype=bool)
    for c in np.unique(train.labels):
        idx = np.flatnonzero(train.labels == c)
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) >= 2 else 0
        held[idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))[:k]]] = True

    def pick(mask):
        sel = np.flatnonzero(mask)
        return SourceSplit([train.refs[i] for i in sel], train.labels[sel], [train.names[i] for i in sel])

    splits = {"train": pick(~held), "val": pick(held)}
    splits.update({k: v for k, v in source.splits.items() if k != "train"})
    rule = f"{source.split_rule}; val: {fraction:g} of each train class held out, seed {seed}"
    return DatasetSource(source.spec, source.classes, splits, source.load, source.class_order, rule, source.extra)
