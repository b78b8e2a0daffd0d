"""fastkd/hashing.py, the one splitmix64 (views and CRD streams both use it)."""
from __future__ import annotations

import warnings

import numpy as np

from fastkd.hashing import GOLDEN, MASK64, hash_ints, splitmix64


def test_splitmix64_matches_the_reference_sequence():
    """Vigna's splitmix64.c seeded with 0: next() adds the golden ratio to the state, then mixes."""
    k = np.arange(3, dtype=np.uint64)
    assert [int(v) for v in splitmix64(k * GOLDEN)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_hash_ints_is_a_splitmix_chain_mod_2_64_without_warnings():
    def reference(*values):  # the same chain in Python integers
        def step(x):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
            return x ^ (x >> 31)

        h = step(values[0] & MASK64)
        for v in values[1:]:
            h = step(h ^ (v & MASK64))
        return h

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning: the arithmetic wraps by design
        for values in ([0], [-1], [2**64 - 1, 7], [3, 2**70, -5], *rng.integers(-2**62, 2**62, (50, 3)).tolist()):
            assert hash_ints(*values) == reference(*values)
    assert hash_ints(1, 2) != hash_ints(2, 1)
