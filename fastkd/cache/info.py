"""``fastkd cache info``: a cache's key, signals, epochs filled and bytes on disk."""
from __future__ import annotations

import os

from fastkd.errors import UserError

from fastkd.sizes import format_bytes

from .store import TeacherCache


def cache_info(root: str) -> dict:
    meta = TeacherCache.read_meta(os.path.abspath(root))
    if meta is None:
        raise UserError(f"{root} holds no teacher cache (no cache.json); fill one with `fastkd cache build`")
    cache = TeacherCache(os.path.abspath(root), meta, writable=False)
    key = meta["key"]
    filled = [cache.written(epoch) for epoch in range(key["epochs"])]
    cache.close()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    return {"cache": os.path.abspath(root), "key": key, "storage": meta["storage"], "signals": meta["signals"],
            "count": key["count"], "epochs": key["epochs"],
            "epochs_filled": sum(all(v == key["count"] for v in f.values()) for f in filled),
            "rows_written": filled, "bytes": size, "size": format_bytes(size)}


def format_info(info: dict) -> str:
    lines = [f"teacher cache {info['cache']}: {info['size']} on disk, {info['epochs_filled']}/{info['epochs']} epochs "
             f"filled ({info['count']} views each)"]
    for name, spec in info["signals"].items():
        top = f" top-{spec['topk']}" if spec.get("topk") else ""
        rows = sum(f[name] for f in info["rows_written"])
        lines.append(f"  signal {name}: {spec['dtype']}{top} {spec['shape']} (computed in {spec.get('compute_dtype')}), "
                     f"{rows}/{info['count'] * info['epochs']} views written")
    lines.append("  key:")
    lines += [f"    {k}: {v}" for k, v in info["key"].items()]
    return "\n".join(lines)
