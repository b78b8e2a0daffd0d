"""fastkd's one stderr logger: progress and notices go to stderr, flushed at once (stdout carries results)."""
from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
