"""The method table of ``fastkd list methods`` and the README: every method fastkd has, with its paper, signals,
default weights and whether the teacher cache serves it, next to the classification methods mdistiller and
torchdistill ship, so the comparison a researcher makes is one table.

Rows of fastkd's own methods come from the registered classes (``paper``, ``peers``, ``needs``, ``cacheable``,
their defaults); :data:`NOT_YET` lists the peers' methods fastkd does not have yet, so the gaps show.
"""
from __future__ import annotations

from typing import List, Tuple

from . import METHODS
from .base import PEERS

#: (name, paper, peers shipping it) of the peers' classification methods fastkd does not have yet.
NOT_YET: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = ()  # none: fastkd has every one of them
HEADERS = ["method", "paper", "teacher signals", "defaults", "CE weight", "cacheable", *PEERS, "fastkd"]


def _defaults(cls) -> str:
    try:
        options = cls().options()
    except Exception:  # noqa: BLE001 - a method whose defaults need the pair: its docstring says them
        return "see `--opt`"
    def show(v):
        if isinstance(v, float):
            return f"{v:g}"
        return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return ", ".join(f"{k}={show(v)}" for k, v in options.items()) or "-"


def method_rows() -> List[List[str]]:
    """The table's rows: fastkd's methods (the student-alone baseline ce first, then by name), then the peers'
    methods it lacks."""
    yes = "yes"
    rows = []
    for name, cls in sorted(METHODS.items(), key=lambda item: (item[0] != "ce", item[0])):  # ce, then a-z
        rows.append([name, cls.paper, ", ".join(sorted(cls.needs)) or "-", _defaults(cls), f"{cls.ce_weight:g}",
                     yes if cls.cacheable else "no (online)", *(yes if p in cls.peers else "-" for p in PEERS), yes])
    for name, paper, peers in NOT_YET:
        rows.append([name, paper, "", "", "", "", *(yes if p in peers else "-" for p in PEERS), "not yet"])
    return rows
