"""Byte counts for people: one formatter (binary units, as ``--memory-limit`` and ``free -h`` read them)."""
from __future__ import annotations


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; bytes below 1 KiB as a whole number."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable
