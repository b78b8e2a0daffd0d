"""Keeping freed memory in the process's heap (glibc), so big tensors stop costing page faults.

glibc serves an allocation above its mmap threshold (at most 32 MiB, however it adapts) with a fresh
``mmap`` and gives it back with ``munmap`` when freed. On a CPU every training step allocates tensors
above that size: a batch of 64 images at 224 px in float32 is 38 MiB, MobileNetV2's expanded activations
at 112 px are 77 MiB. Each one is then new memory that the kernel zeroes and maps page by page on first
touch. Measured on the 2-core dev machine: normalising a 224 px batch took 16 ms, 10 of them page faults
(a microbenchmark); a MobileNetV2 SGD step (batch 32) ran 1.33x faster at 112 px and 2.10x at 224 px with
the memory kept (``benchmarks/bench_memory_format.py``, docs/memory-format.md).

:func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB with ``mallopt``,
the tuning PyTorch's CPU performance guide gets from jemalloc or tcmalloc: allocations below 1 GiB
come from the heap and freed memory is kept for the next step. The price: the process holds on to its
peak heap. ``fastkd`` commands, ``fastkd.train.trainer.train`` and the benchmarks call it at start;
DataLoader workers forked later inherit it. ``FASTKD_SYSTEM_MALLOC=1`` leaves glibc's defaults; other C
libraries are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_OFF = "FASTKD_SYSTEM_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
KEEP_BYTES = 1 << 30

_applied = None


def keep_freed_memory() -> bool:
    """Applies the tuning once per process; True when glibc took it (False: not glibc, or turned off)."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get(ENV_OFF, "") in ("", "0") and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and other C libraries have no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    return _applied
