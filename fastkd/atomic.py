"""Atomic file writes: a reader sees the previous complete file or the new complete file, never a torn one.

Each writer fills a temporary file in the destination's folder (same file system, so the rename is atomic),
flushes and fsyncs it, then ``os.replace``s it over the destination. On any error (disk full included) the
temporary file is removed, the destination is left as it was, and the error propagates.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import os
import threading
from typing import Any, Callable, IO

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _temp_name(folder: str, name: str) -> str:
    return os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")  # unique per writer


def remove_stale_temps(path: str) -> None:
    """Delete the temporary files of writes to ``path`` that a killed process left behind."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        os.remove(stale)


def _atomic_write(path: str, mode: str, fill: Callable[[IO], None]) -> None:
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = _temp_name(folder, name)
    try:
        with open(tmp, mode) as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException as exc:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in _FULL:  # name the file the user knows, not the temp
            raise OSError(exc.errno, exc.strerror, os.path.join(folder, name)) from exc
        raise


def atomic_write_text(path: str, text: str) -> None:
    _atomic_write(path, "w", lambda f: f.write(text))


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic_write(path, "wb", lambda f: f.write(data))


def atomic_write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(path: str, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()  # serialised first: a full disk then surfaces as the OSError of a plain write
    torch.save(obj, buffer)
    _atomic_write(path, "wb", lambda f: f.write(buffer.getbuffer()))
