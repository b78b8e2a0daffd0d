"""Guarding the process's torch thread count against libraries that change it.

FFCV sets ``torch.set_num_threads(1)`` when its compiler module is imported and
``torch.set_num_threads(num_workers)`` whenever a Loader is built or iterated, in the calling thread.
That silently changes training speed and, since float reductions depend on the thread count, the
numbers a seeded run produces. fastkd wraps every such call so the count the user's process had stays.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def preserve_torch_threads():
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
