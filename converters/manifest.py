"""``manifest.json``: the contract between converters (which write it) and pipelines (which read it)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

FORMAT = "fastkd-conversion"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def checksum_tree(folder: str) -> Dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX paths, sorted), the manifest excluded."""
    sums = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel != MANIFEST:
                sums[rel] = sha256_file(full)
    return dict(sorted(sums.items()))


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
