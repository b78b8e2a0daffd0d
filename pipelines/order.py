"""The sample order of an epoch: a pure function of (seed, epoch), shared by every backend."""
from __future__ import annotations

from typing import List

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world: int = 1) -> np.ndarray:
    """Dataset indices this rank visits in ``epoch``.

    With ``world > 1`` the permutation is padded by wrapping to a multiple of ``world`` and rank ``r``
    takes every ``world``-th index starting at ``r`` (the DistributedSampler convention).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if world > 1:
        pad = (-n) % world
        order = np.concatenate([order, order[:pad]])[rank::world]
    return order.astype(np.int64)


def batches(order: np.ndarray, batch_size: int, drop_last: bool) -> List[np.ndarray]:
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
