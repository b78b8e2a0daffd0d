"""The signal vocabulary shared by models (which expose signals) and methods (which ask for them).

- ``stageK``: the output of the K-th resolution stage (K = 1..4; resnet32 and SqueezeNet have 3);
- ``preK``: stage K's pre-activation map, the input of its final ReLU (:mod:`fastkd.models.preact`);
- ``preK_stats``: the 2 x C ``[mean; std]`` of the Gaussian modelling ``preK`` (suffix :data:`STATS_SUFFIX`);
- ``embedding``: the penultimate feature vector, the classifier's input;
- ``logits``: the model output itself (a signal, but not a hooked tap).

This module imports nothing from models or methods, so both can import it.
"""
from __future__ import annotations

import re
from typing import Iterable, Tuple

from fastkd.errors import UserError

MAX_STAGE = 4
STATS_SUFFIX = "_stats"
EMBEDDING = "embedding"
LOGITS = "logits"
#: The stage count every model family has (resnet32 and SqueezeNet stop at stage 3).
COMMON_DEPTH = 3
VALID_FORMS = f"stageK, preK, preK{STATS_SUFFIX} (K = 1..{MAX_STAGE}), {EMBEDDING}, {LOGITS}"

_TAP = re.compile(rf"(stage|pre)([1-9][0-9]*)({STATS_SUFFIX})?")


def stage(k: int) -> str:
    return f"stage{k}"


def pre(k: int) -> str:
    return f"pre{k}"


def stats(name: str) -> str:
    """``preK`` -> ``preK_stats``."""
    return name + STATS_SUFFIX


STAGE_TAPS: Tuple[str, ...] = tuple(stage(k) for k in range(1, MAX_STAGE + 1))
PRE_TAPS: Tuple[str, ...] = tuple(pre(k) for k in range(1, MAX_STAGE + 1))


def split_stats(name: str) -> Tuple[str, bool]:
    """``"pre2_stats"`` -> ``("pre2", True)``; ``"pre2"`` -> ``("pre2", False)``."""
    if name.endswith(STATS_SUFFIX):
        return name[: -len(STATS_SUFFIX)], True
    return name, False


def is_valid(name: object) -> bool:
    """Whether ``name`` is a well-formed signal name (whether a given model has it is another question)."""
    if name in (EMBEDDING, LOGITS):
        return True
    m = _TAP.fullmatch(name) if isinstance(name, str) else None
    return bool(m) and 1 <= int(m.group(2)) <= MAX_STAGE and (m.group(1) == "pre" or not m.group(3))


def check_names(names: Iterable[str], where: str) -> None:
    """A UserError naming every malformed name in ``names`` and listing the valid forms."""
    bad = [n for n in names if not is_valid(n)]
    if bad:
        raise UserError(f"{where}: unknown signal name(s) {', '.join(map(repr, bad))}; valid forms: {VALID_FORMS}")
