"""fastkd.malloc: the fastkd command keeps freed big tensors in the heap (glibc), unless told not to."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "cli":
    from fastkd.cli import main
    try:
        main(["--version"])
    except SystemExit:
        pass
x = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MiB: above glibc's largest default mmap threshold
info = libc.mallinfo2()
print("mmapped" if info.hblkhd >= 64 << 20 else "heap")
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(),
                                reason="glibc >= 2.33 only (mallopt, mallinfo2)")


def _probe(mode: str, **env) -> str:
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    return run.stdout.split("\n")[-2]


def test_the_fastkd_command_serves_big_tensors_from_the_heap():
    assert _probe("plain", FASTKD_SYSTEM_MALLOC="") == "mmapped"  # glibc's default: a fresh mmap
    assert _probe("cli", FASTKD_SYSTEM_MALLOC="") == "heap"


def test_fastkd_system_malloc_leaves_glibc_defaults():
    assert _probe("cli", FASTKD_SYSTEM_MALLOC="1") == "mmapped"
