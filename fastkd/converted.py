"""The on-disk format of a converted folder: what converters write and pipelines read, defined once.

A conversion is a folder holding ``manifest.json`` plus, per split, FFCV ``ffcv/<split>.beton`` and DALI
``dali/<split>/shard-NNNNN.tar`` WebDataset shards (each with DALI's ``.idx``) and ``samples.npy``, a table
of where every image lies in the shards (shard, byte offset, size, label, height, width).
The manifest records ``format``/``format_version`` and, for every other file, its sha256 (``checksums``)
and byte size (``sizes``). This module sits in ``fastkd`` itself, beside ``errors``: converters (which
write the format) and pipelines (which read it) both import it, and it imports neither.

Opening a folder (:func:`read_manifest`) checks the format version and every file's size (a ``stat`` each:
cheap, and it catches the usual damage, a truncated or partly copied file); :func:`verify` reads every byte
and checks every sha256 (``fastkd verify DIR``).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Tuple

import numpy as np

from fastkd.atomic import atomic_write_json
from fastkd.errors import UserError
from fastkd.hashing import sha256_file
from fastkd.ownership import MARKER as OWNER_MARKER
from fastkd.safe_paths import inside, plain_name, relative_path

FORMAT = "fastkd-conversion"
#: 2: the manifest records every file's size (``sizes``). A change to any file's layout bumps it.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SAMPLES = "samples.npy"
SAMPLE_DTYPE = np.dtype(
    [("shard", "<u4"), ("offset", "<u8"), ("nbytes", "<u4"), ("label", "<i8"), ("height", "<u2"), ("width", "<u2")]
)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.tar"


def _files(folder: str) -> List[Tuple[str, str]]:
    """(relative POSIX path, full path) of every file under ``folder``, sorted, the manifest and the
    ownership marker excluded."""
    found = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel not in (MANIFEST, OWNER_MARKER):  # the marker: fastkd made the folder (fastkd.ownership)
                found.append((rel, full))
    return sorted(found)


def checksum_tree(folder: str) -> Dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX paths, sorted), the manifest excluded."""
    return {rel: sha256_file(full) for rel, full in _files(folder)}


def size_tree(folder: str) -> Dict[str, int]:
    """Byte size of every file under ``folder`` (as :func:`checksum_tree`)."""
    return {rel: os.path.getsize(full) for rel, full in _files(folder)}


def write_manifest(folder: str, fields: dict) -> dict:
    """Write ``folder``'s manifest (atomically): the format, then ``fields``, then every file's sha256 and size."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields,
                "checksums": checksum_tree(folder), "sizes": size_tree(folder)}
    atomic_write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def read_manifest(root: str) -> dict:
    """The manifest of the conversion in ``root``, its format and version checked (a UserError otherwise)."""
    if os.path.isdir(root + ".partial") and not os.path.isfile(os.path.join(root, MANIFEST)):
        raise UserError(f"{root} is an interrupted conversion (only {root}.partial exists); "
                        "run the same `fastkd convert` again")
    if not os.path.exists(root):
        raise UserError(f"{root} does not exist; run `fastkd convert --dataset NAME --out {root}` first")
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{root} is not a fastkd conversion (no {MANIFEST}); "
                        f"create one with `fastkd convert --dataset NAME --out {root}`")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); convert the dataset again")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a fastkd manifest; convert the dataset with `fastkd convert`")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        source = manifest.get("source_root")
        again = (f"`fastkd convert --dataset {manifest.get('dataset', 'NAME')}{f' --root {source}' if source else ''} "
                 f"--out {root} --overwrite`")
        if isinstance(found, int) and found > FORMAT_VERSION:
            raise UserError(f"{root} was converted by a newer fastkd (format version {found}; this fastkd reads "
                            f"version {FORMAT_VERSION}); upgrade fastkd, or convert again with this one: {again}")
        raise UserError(f"{root} was converted by an older fastkd (format version {found}; this fastkd reads "
                        f"version {FORMAT_VERSION}); convert it again: {again}")
    check_names(manifest, path)
    return manifest


def check_names(manifest: dict, where: str) -> None:
    """Every file name the manifest (read from ``where``) lists is a relative path inside the conversion and
    every split name a plain name (a UserError otherwise): ``verify``, ``eval`` and the pipelines build paths
    from them and must never stat, hash or read a file outside the folder."""
    for key in ("checksums", "sizes"):
        listed = manifest.get(key, {})
        if not isinstance(listed, dict):
            raise UserError(f"{where}: {key} is not a mapping of file names; convert the dataset again")
        for rel in listed:
            relative_path(rel, f"{key} entry", where)
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict):
        raise UserError(f"{where}: splits is not a mapping of split names; convert the dataset again")
    for split, info in splits.items():
        plain_name(split, "split", where)
        if not isinstance(info, dict):
            continue
        dali = info.get("dali") if isinstance(info.get("dali"), dict) else {}
        for rel in list(dali.get("shards") or []) + list(dali.get("index_files") or []):
            relative_path(rel, f"split {split} file", where)
        for rel in (dali.get("samples"), info.get("ffcv")):
            if rel is not None:
                relative_path(rel, f"split {split} file", where)


def check_sizes(root: str, manifest: dict) -> None:
    """Every file the manifest lists exists with its recorded size (one ``stat`` per file, no reading)."""
    sizes = manifest.get("sizes", {})
    for rel in manifest.get("checksums", {}):
        path = inside(root, rel, "checksums entry", os.path.join(root, MANIFEST))
        if not os.path.isfile(path):
            raise UserError(f"{root} is incomplete: {rel} is missing; convert the dataset again")
        actual, size = os.path.getsize(path), sizes.get(rel)
        if actual != size:
            raise UserError(f"{path} is damaged: {actual} bytes where the manifest records {size} (truncated or "
                            f"partly copied); convert the dataset again, or run `fastkd verify {root}` to check all files")


def verify(root: str, progress: bool = True) -> List[str]:
    """Check every file's sha256 against the manifest; returns one line per bad file (empty: all good)."""
    from tqdm import tqdm

    root = os.path.abspath(root)
    manifest = read_manifest(root)
    sizes = manifest.get("sizes", {})
    bad = []
    with tqdm(total=sum(sizes.values()), desc=f"verify {os.path.basename(root)}", unit="B", unit_scale=True,
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for rel, expected in manifest.get("checksums", {}).items():
            path = inside(root, rel, "checksums entry", os.path.join(root, MANIFEST))
            if not os.path.isfile(path):
                bad.append(f"{rel}: missing")
            elif sha256_file(path, progress=bar) != expected:
                bad.append(f"{rel}: sha256 differs from the manifest ({os.path.getsize(path)} bytes, "
                           f"recorded {sizes.get(rel)})")
    return bad


class ShardReader:
    """Random access to the images of a split's shards through its sample table (memory-mapped)."""

    def __init__(self, folder: str, shards: List[str]):
        self.folder, self.shard_names = folder, shards
        self.table = np.load(os.path.join(folder, SAMPLES))
        self._maps = None

    def _mapped(self):
        if self._maps is None:  # opened lazily so the reader pickles into worker processes
            self._maps = [np.memmap(os.path.join(self.folder, s), dtype=np.uint8, mode="r") for s in self.shard_names]
        return self._maps

    def __len__(self) -> int:
        return len(self.table)

    def payload(self, i: int) -> bytes:
        row = self.table[i]
        start = int(row["offset"])
        return self._mapped()[int(row["shard"])][start : start + int(row["nbytes"])].tobytes()

    def __getstate__(self):
        return {"folder": self.folder, "shard_names": self.shard_names, "table": self.table, "_maps": None}
