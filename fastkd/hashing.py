"""All of fastkd's counter-based hashing. On uint64 NumPy arrays, splitmix64 (Steele, Lea & Flood, OOPSLA 2014; the constants of Vigna's reference C code) on uint64 NumPy
arrays: counter-based hashing, so a random stream is a pure function of (seed, keys), not of call order.
Array arithmetic wraps mod 2**64 without overflow warnings (NumPy scalars would warn). On torch tensors,
:func:`hash32` (lowbias32), exact on every device: the batch augmentations' per-pixel fill."""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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


def sha256_file(path: str, chunk: int = 1 << 22, progress=None) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks (``progress.update(n)`` after each, when given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
            if progress is not None:
                progress.update(len(block))
    return h.hexdigest()


_M32 = (1 << 32) - 1


def mul32(x: "torch.Tensor", c: int) -> "torch.Tensor":
    """``x * c mod 2**32`` for int64 ``x`` < 2**32, split in 16-bit halves so nothing overflows int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def hash32(x: "torch.Tensor") -> "torch.Tensor":
    """lowbias32 (C. Wellons): a 32-bit integer hash, exact on every device."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)
