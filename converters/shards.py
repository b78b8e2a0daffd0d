"""WebDataset tar shards that DALI's own reader opens, plus a random-access sample table.

Each sample is two tar members, ``<key>.<jpg|png>`` and ``<key>.cls`` (the 0-based label as ASCII),
where ``<key>`` is the 8-digit dataset index. Beside each shard, ``<shard>.idx`` is DALI's v1.2 index
(the format of DALI's ``wds2idx``), so ``fn.readers.webdataset`` needs no indexing pass; ``samples.npy``
records where every image lies (``fastkd.converted.SAMPLE_DTYPE``) so that fastkd's backends read any
sample in any order without scanning the tar (``fastkd.converted.ShardReader``).
Output is deterministic: fixed member order, mtime 0, uid/gid 0. Each shard is written under a
temporary name and renamed when complete.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Iterable, List, Tuple

import numpy as np

from fastkd.atomic import atomic_write_text
from fastkd.converted import SAMPLE_DTYPE, SAMPLES, shard_name

Row = Tuple[int, int, int, int, int, int]


def _padded(n: int) -> int:
    return (n + 511) // 512 * 512


def write_shard(folder: str, k: int, ext: str, samples: Iterable[Tuple[int, bytes, int, int, int]]) -> List[Row]:
    """Write shard ``k`` from ``(index, payload, label, height, width)`` items; returns its table rows."""
    path = os.path.join(folder, shard_name(k))
    tmp = path + ".tmp"
    rows: List[Row] = []
    lines: List[str] = []
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, data: bytes) -> int:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            return tar.offset - _padded(len(data))

        for index, payload, label, height, width in samples:
            key = f"{index:08d}"
            img_off = add(f"{key}.{ext}", payload)
            cls = str(int(label)).encode()
            cls_off = add(f"{key}.cls", cls)
            lines.append(f"{ext} {img_off} {len(payload)} {key}.{ext} cls {cls_off} {len(cls)} {key}.cls")
            rows.append((k, img_off, len(payload), int(label), height, width))
    atomic_write_text(path[:-4] + ".idx", f"v1.2 {len(lines)}\n" + "".join(line + "\n" for line in lines))
    os.replace(tmp, path)
    return rows


def write_table(folder: str, rows: List[Row]) -> np.ndarray:
    table = np.array([tuple(r) for r in rows], dtype=SAMPLE_DTYPE)
    np.save(os.path.join(folder, SAMPLES), table)
    return table
