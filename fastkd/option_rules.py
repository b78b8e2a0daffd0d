"""What makes a value valid for a method option, judged by the option's name (the same rule for every method)."""
from __future__ import annotations

import math
from typing import Optional


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def method_option_rule(name: str, value) -> Optional[str]:
    """Why ``value`` is no valid value for a method option called ``name`` (None: it is), by the option's name,
    for every method: numbers finite, a temperature > 0, a loss weight (``weight``, ``*_weight``, ``alpha``,
    ``beta``, ``scale``) >= 0, ``eps`` / ``p`` > 0. Checked by :class:`TrainConfig` and ``parse_methods``."""
    if not is_number(value):
        return None  # strings (taps, "auto"); parse_methods checks the type against the option's default
    if not math.isfinite(value):
        return "must be a finite number"
    if name in ("temperature", "eps", "p") and not value > 0:
        return "must be > 0"
    if (name in ("weight", "alpha", "beta", "scale") or name.endswith("_weight")) and value < 0:
        return "is a loss weight; give a value >= 0"
    return None
