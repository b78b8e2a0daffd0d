"""Distillation methods: one file each, registered with ``@register_method``; a method is a loss only.

The trainer owns the student and teacher forward passes and hands each method the signals it
declared (``Method.needs``), which is what lets a teacher forward be replaced by a cache lookup.
``--method kd+at`` combines registered methods by summing their weighted terms. A new method is one new
module here; every module of this package is imported below.
"""
from __future__ import annotations

from typing import Dict, List

from fastkd.registry import Registry, import_modules

METHODS: Registry = Registry("method")
register_method = METHODS.register

from .base import Method  # noqa: E402
import_modules(__name__)  # each method module registers itself on import


def parse_methods(spec: str, options: Dict[str, Dict[str, object]] | None = None) -> List[Method]:
    """``"kd+at"`` -> instances; ``options`` maps a method name to keyword overrides of its defaults."""
    options = options or {}
    names = [METHODS.canonical(part.strip()) for part in spec.split("+") if part.strip()]
    if not names:
        names = ["ce"]
    out = []
    for name in names:
        cls = METHODS.get(name)
        out.append(cls(**options.get(name, {})))
    return out


def list_methods() -> List[str]:
    return METHODS.names()
