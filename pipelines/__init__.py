"""Online pipelines: converted data -> ``Batch`` on the training device.

A backend is one module ``<name>_backend.py`` here whose :class:`~.backend.Backend` subclass registers with
``@register_backend`` and declares the converted format it reads (``reads``); every such module is imported
below, and none imports ffcv or nvidia.dali until it is asked for.
"""
from __future__ import annotations

from fastkd.registry import Registry, import_modules

BACKENDS: Registry = Registry("backend")
register_backend = BACKENDS.register

import_modules(__name__, suffix="_backend")  # register; no heavy imports
from .dataset import ConvertedData, open_converted  # noqa: E402,F401
from .loader import Batch, Loader, ViewParams  # noqa: E402,F401
