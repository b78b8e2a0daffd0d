"""Online pipelines: converted data -> ``Batch`` on the training device.

Backends (``ffcv``, ``dali``, ``torch``, ``memory``) register with ``@register_backend``; none imports ffcv or
nvidia.dali until it is asked for.
"""
from __future__ import annotations

from fastkd.registry import Registry

BACKENDS: Registry = Registry("backend")
register_backend = BACKENDS.register

from . import dali_backend, ffcv_backend, memory_backend, torch_backend  # noqa: E402,F401  (register; no heavy imports)
from .dataset import ConvertedData, open_converted  # noqa: E402,F401
from .loader import Batch, Loader  # noqa: E402,F401
