"""splitmix64 (Steele, Lea & Flood, OOPSLA 2014; the constants of Vigna's reference C code) on uint64 NumPy
arrays: counter-based hashing, so a random stream is a pure function of (seed, keys), not of call order.
Array arithmetic wraps mod 2**64 without overflow warnings (NumPy scalars would warn)."""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASK64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64) of each element; a new array."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def splitmix64(x: np.ndarray) -> np.ndarray:
    """One splitmix64 step on each element: the finaliser of ``x + golden ratio``."""
    return mix64(x + GOLDEN)


def hash_ints(*values: int) -> int:
    """A 64-bit hash of a sequence of Python ints (each taken mod 2**64): a splitmix64 chain."""
    h = np.zeros(1, dtype=np.uint64)
    for i, v in enumerate(values):
        word = np.array([int(v) & MASK64], dtype=np.uint64)
        h = splitmix64(word if i == 0 else h ^ word)
    return int(h[0])
