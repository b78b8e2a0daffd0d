"""Offline converters: a dataset in its official on-disk layout -> shards, FFCV betons, manifest.

A dataset is one module in ``converters/datasets/`` with a spec and a reader registered by
``@register_dataset(SPEC)``; every module there is imported (and so registered) on import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastkd.registry import Registry, import_modules

from .spec import DatasetSource, DatasetSpec


@dataclass(frozen=True)
class DatasetEntry:
    spec: DatasetSpec
    read: Callable[..., DatasetSource]  # read(root, **options) -> DatasetSource


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(spec: DatasetSpec):
    def decorator(read):
        DATASETS.register(spec.name)(DatasetEntry(spec, read))
        return read

    return decorator


import_modules(f"{__name__}.datasets")  # one file each, registered on import
