"""The sample order of an epoch: a pure function of (seed, epoch), shared by every backend, and how it is
dealt to the ranks of a torchrun job."""
from __future__ import annotations

from typing import List

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world: int = 1, batch_size: int = 1,
                drop_last: bool = False, views_per_image: int = 1) -> np.ndarray:
    """Dataset indices this rank visits in ``epoch``, in order.

    ``views_per_image`` K > 1: each photo of the permutation ``K`` times in a row (its K views, ``k`` = position
    mod K), so with ``batch_size`` a multiple of K a batch holds ``batch_size / K`` whole photos and the ranks
    deal whole photos.

    One process visits the seeded permutation. ``world`` ranks of per-rank batch ``B`` read it in global
    batches of ``world x B``, rank ``r`` taking the ``r``-th block of ``B`` of each, so global batch ``k``
    is the concatenation, in rank order, of the ranks' batches ``k``: N ranks see exactly the samples and
    batches of one process with batch N x B (and mixing pairs, positions 2k and 2k+1, stay on one rank
    when B is even). ``drop_last``: whole global batches only, the samples one process with batch N x B
    keeps. Otherwise the last, partial global batch is dealt in blocks of B in rank order, so a rank may
    get fewer samples or none: every sample is visited once, none is repeated to pad (evaluation counts
    each once; DistributedSampler would repeat some).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if views_per_image > 1:
        order = np.repeat(order, views_per_image)
    if world > 1:
        if drop_last:
            order = order[: len(order) - len(order) % (world * batch_size)]
        order = order[(np.arange(len(order)) // batch_size) % world == rank]
    return order.astype(np.int64)


def batches(order: np.ndarray, batch_size: int, drop_last: bool) -> List[np.ndarray]:
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
