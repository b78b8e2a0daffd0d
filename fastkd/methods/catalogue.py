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
NOT_YET: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("vid", "Ahn et al. 2019", ("mdistiller", "torchdistill")),
    ("reviewkd", "Chen et al. 2021", ("mdistiller", "torchdistill")),  # torchdistill: HierarchicalContextLoss
    ("fsp", "Yim et al. 2017", ("torchdistill",)),
    ("ft", "Kim et al. 2018", ("torchdistill",)),
    ("ab", "Heo et al. 2019 (AAAI)", ("torchdistill",)),  # torchdistill: AltActTransferLoss
    ("sskd", "Xu et al. 2020", ("torchdistill",)),
    ("srd", "Miles & Mikolajczyk 2024", ("torchdistill",)),
    ("pad_l2", "Zhang et al. 2020", ("torchdistill",)),
    ("kta", "He et al. 2019 (knowledge adaptation, affinity)", ("torchdistill",)),  # KTALoss, AffinityLoss
    ("tfkd", "Yuan et al. 2020", ("torchdistill",)),  # RegularizationLoss
    ("dist+", "Huang et al. 2025", ("torchdistill",)),
    ("skd", "Jeong et al. 2026", ("torchdistill",)),  # SKDInstanceLoss, SKDDirectionLoss
    ("mlkd", "Jin et al. 2023", ()),
)
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
    """The table's rows: fastkd's methods in registration order, then the peers' methods it lacks."""
    yes = "yes"
    rows = []
    for name, cls in METHODS.items():
        rows.append([name, cls.paper, ", ".join(sorted(cls.needs)) or "-", _defaults(cls), f"{cls.ce_weight:g}",
                     yes if cls.cacheable else "no (online)", *(yes if p in cls.peers else "-" for p in PEERS), yes])
    for name, paper, peers in NOT_YET:
        rows.append([name, paper, "", "", "", "", *(yes if p in peers else "-" for p in PEERS), "not yet"])
    return rows
