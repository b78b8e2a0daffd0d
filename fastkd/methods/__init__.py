"""Distillation methods: one file each, registered with ``@register_method``; a method is a loss only.

The trainer owns the student and teacher forward passes and hands each method the signals it
declared (``Method.needs``), which is what lets a teacher forward be replaced by a cache lookup.
``--method kd+at`` combines registered methods by summing their weighted terms. A new method is one new
module here; every module of this package is imported below.
"""
from __future__ import annotations

from typing import Dict, List

from fastkd.registry import Registry, import_modules

METHODS: Registry = Registry("method", name_attribute="name")  # sets each class's ``name``
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
        opts = options.get(name, {})
        check_options(name, cls, opts)
        out.append(cls(**opts))
    return out


def check_options(name: str, cls, opts: Dict[str, object]) -> None:
    """One-line UserErrors for method ``name``'s options ``opts``: an option it does not have, a non-number
    where its default is a number, and the value rules of ``TrainConfig`` (``method_option_rule``)."""
    import inspect

    from fastkd.errors import UserError
    from fastkd.option_rules import method_option_rule

    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    for key, value in opts.items():
        if key not in params:
            raise UserError(f"method {name} has no option {key!r}; its options: {', '.join(params) or 'none'}")
        default = params[key].default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise UserError(f"--opt {name}.{key}={value!r} must be a number (default {default})")
        if numeric and isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
                and not value.is_integer():
            raise UserError(f"--opt {name}.{key}={value!r} must be an integer (default {default})")
        bad = method_option_rule(key, value)
        if bad:
            raise UserError(f"--opt {name}.{key}={value!r} {bad}")


def check_chosen_options(spec: str, options: Dict[str, Dict[str, object]]) -> None:
    """Every method named in ``options`` (``--opt METHOD.NAME=VALUE``) is one of ``spec``'s (``--method``), and
    its options pass :func:`check_options`; one-line UserErrors otherwise."""
    from fastkd.errors import UserError

    chosen = {METHODS.canonical(p) for p in spec.split("+") if p.strip()}
    for method, opts in options.items():
        name = METHODS.canonical(method)
        if name not in chosen:
            raise UserError(f"--opt {method}.* given but --method is {spec}; drop it or add {name} to --method")
        check_options(name, METHODS.get(name), opts)


def list_methods() -> List[str]:
    return METHODS.names()
