"""WebDataset tar shards that DALI's own reader opens, plus a random-access sample table.

Each sample is two tar members, ``<key>.<jpg|png>`` and ``<key>.cls`` (the 0-based label as ASCII),
where ``<key>`` is the 8-digit dataset index. Beside each shard, ``<shard>.idx`` is DALI's v1.2 index
(the format of DALI's ``wds2idx``), so ``fn.readers.webdataset`` needs no indexing pass; ``samples.npy``
records where every image lies (shard, byte offset, size, label, height, width) so that fastkd's
torch and DALI backends can read any sample in any order without scanning the tar.
Output is deterministic: fixed member order, mtime 0, uid/gid 0.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import List

import numpy as np

SAMPLE_DTYPE = np.dtype(
    [("shard", "<u4"), ("offset", "<u8"), ("nbytes", "<u4"), ("label", "<i8"), ("height", "<u2"), ("width", "<u2")]
)


def _padded(n: int) -> int:
    return (n + 511) // 512 * 512


class ShardWriter:
    """Writes samples in order into ``shard-%05d.tar`` files of at most ``per_shard`` samples."""

    def __init__(self, folder: str, ext: str, per_shard: int):
        self.folder, self.ext, self.per_shard = folder, ext, per_shard
        os.makedirs(folder, exist_ok=True)
        self.rows: List[tuple] = []
        self.shards: List[str] = []
        self._tar = None
        self._idx_lines: List[str] = []
        self._in_shard = 0

    def _open_next(self) -> None:
        self._close_current()
        name = f"shard-{len(self.shards):05d}.tar"
        self.shards.append(name)
        self._tar = tarfile.open(os.path.join(self.folder, name), "w", format=tarfile.USTAR_FORMAT)
        self._idx_lines, self._in_shard = [], 0

    def _add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        return self._tar.offset - _padded(len(data))

    def write(self, index: int, payload: bytes, label: int, height: int, width: int) -> None:
        if self._tar is None or self._in_shard == self.per_shard:
            self._open_next()
        key = f"{index:08d}"
        img_off = self._add(f"{key}.{self.ext}", payload)
        cls = str(int(label)).encode()
        cls_off = self._add(f"{key}.cls", cls)
        self._idx_lines.append(
            f"{self.ext} {img_off} {len(payload)} {key}.{self.ext} cls {cls_off} {len(cls)} {key}.cls"
        )
        self.rows.append((len(self.shards) - 1, img_off, len(payload), int(label), height, width))
        self._in_shard += 1

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        idx_path = os.path.join(self.folder, self.shards[-1][:-4] + ".idx")
        with open(idx_path, "w") as f:
            f.write(f"v1.2 {len(self._idx_lines)}\n" + "\n".join(self._idx_lines) + "\n")
        self._tar = None

    def close(self) -> np.ndarray:
        """Finish the last shard and write ``samples.npy``; returns the sample table."""
        self._close_current()
        table = np.array(self.rows, dtype=SAMPLE_DTYPE)
        np.save(os.path.join(self.folder, "samples.npy"), table)
        return table


class ShardReader:
    """Random access to the images of a split's shards through its sample table (memory-mapped)."""

    def __init__(self, folder: str, shards: List[str]):
        self.folder, self.shard_names = folder, shards
        self.table = np.load(os.path.join(folder, "samples.npy"))
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
