""":class:`~fastkd.train.config.TrainConfig`'s fields as click options.

Each field is declared once, with its help text and spelling (``fastkd/train/config.py``: ``option(...)``);
``fastkd train``, ``fastkd cache build`` and ``fastkd grid`` take their options from that declaration, so a
new option is one edit. :func:`config_options` adds the options to a command; :func:`config_values` turns
the parsed values back into TrainConfig fields.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, Iterable, Optional

import click

from fastkd.errors import UserError
from fastkd.train.config import TrainConfig

from .options import RegistryOption

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# --tensorboard of the multi-run commands (grid, compare, ablate): one folder of events per cell
CELLS_TENSORBOARD = {"help": "Also write each cell's metrics.jsonl scalars as TensorBoard events, in this "
                             "folder/<the cell's folder under --out>, so that `tensorboard --logdir` on it shows the "
                             "cells side by side (needs tensorboard).", "metavar": "DIR"}


def parse_method_options(items) -> dict:
    """``("kd.temperature=2", "kd.weight=0.5")`` -> ``{"kd": {"temperature": 2.0, "weight": 0.5}}``."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--opt {item!r} is not METHOD.NAME=VALUE (e.g. --opt kd.temperature=4)")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(method.lower(), {})[name] = parsed
    return out


def chosen_method_options(items, names) -> dict:
    """``--opt`` items of a command that runs the methods ``names`` (compare, bench methods): parsed, keyed by each
    method's canonical name, and checked to name one of those methods and one of its options (one-line errors)."""
    from fastkd.methods import METHODS, check_chosen_options

    options = {METHODS.canonical(m): o for m, o in parse_method_options(items).items()}
    check_chosen_options("+".join(names), options)
    return options


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return None  # a required field, or a list/dict (their options are given empty)


def _spec(name: str, overrides: dict) -> dict:
    f = FIELDS[name]
    spec = {"default": _default(f), **f.metadata, **overrides}
    spec.setdefault("flag", "--" + name.replace("_", "-"))
    return spec


def _click_option(name: str, spec: dict, from_recipe: bool):
    """The click option of field ``name`` (``spec``: its declaration with a command's overrides)."""
    f, default, help_text = FIELDS[name], spec["default"], spec["help"]
    kwargs = dict(help=help_text)
    if spec.get("metavar"):
        kwargs["metavar"] = spec["metavar"]
    if spec.get("registry"):
        kwargs.update(cls=RegistryOption, registry=spec["registry"])
    if from_recipe:  # grid: unset options come from the recipe, else TrainConfig's default
        if default is not None and not spec.get("inverted"):
            kwargs["help"] = f"{help_text} [recipe, else {default}]"
        default = None
    decls = [spec["flag"], *spec.get("aliases", ())]
    if spec.get("method_options"):
        return click.option(*decls, name, multiple=True, **kwargs)
    if spec.get("comma_list"):
        return click.option(*decls, name, default="" if not from_recipe else None, **kwargs)
    if spec.get("inverted"):  # e.g. --quiet sets progress False
        return click.option(*decls, name, flag_value=False, default=None if from_recipe else True, **kwargs)
    if f.type in ("bool", bool):
        if spec.get("negatable"):
            flag = spec["flag"][2:]
            return click.option(f"--{flag}/--no-{flag}", name, default=default, show_default=not from_recipe, **kwargs)
        return click.option(*decls, name, is_flag=True, default=None if from_recipe else False, **kwargs)
    if spec.get("choices"):
        kwargs["type"] = click.Choice(list(spec["choices"]))
    elif "int" in str(f.type):
        kwargs["type"] = click.IntRange(spec["min"]) if "min" in spec else int
    elif "float" in str(f.type):
        kwargs["type"] = float
    show = default is not None and not from_recipe
    return click.option(*decls, name, default=default, required=bool(spec.get("required")), show_default=show, **kwargs)


def config_options(names: Optional[Iterable[str]] = None, overrides: Optional[Dict[str, dict]] = None,
                   from_recipe: bool = False):
    """A decorator adding the options of TrainConfig fields ``names`` (default: all, in declaration order) to
    a click command; ``overrides`` changes a field's declaration for this command (e.g. another default or
    flag); ``from_recipe``: every option defaults to unset (None), for commands that fill the rest from a
    recipe."""
    names = list(names or FIELDS)
    overrides = overrides or {}
    unknown = [n for n in [*names, *overrides] if n not in FIELDS]
    if unknown:
        raise AssertionError(f"not TrainConfig fields: {unknown}")

    def decorate(command):
        for name in reversed(names):  # click lists options in decoration order, innermost first
            spec = _spec(name, overrides.get(name, {}))
            if spec.get("cli", True) is not False:
                command = _click_option(name, spec, from_recipe)(command)
        return command

    return decorate


def config_values(kw: dict, names: Optional[Iterable[str]] = None) -> dict:
    """Pop the parsed values of TrainConfig fields ``names`` (default: all) from ``kw`` (a command's keyword
    arguments) and return them as TrainConfig fields; options left unset (None: a ``from_recipe`` command) are
    left out."""
    out = {}
    for name in list(names or FIELDS):
        if name not in kw:
            continue
        value, spec = kw.pop(name), FIELDS[name].metadata
        if value is None:
            continue
        if spec.get("method_options"):
            value = parse_method_options(value)
        elif spec.get("comma_list"):
            try:
                value = [int(m) for m in value.split(",") if m.strip()]
            except ValueError:
                raise UserError(f"--{name.replace('_', '-')} {value!r} must be a comma list of epochs, "
                                "e.g. 150,180,210")
        out[name] = value
    return out
