"""Grid recipes shipped with fastkd: small JSON files read with the standard library.

A recipe holds ``teachers``, ``student``, ``methods``, ``seeds``, ``train`` (TrainConfig fields for
every run), optional ``teacher_train`` / ``student_train`` (fields for the teachers / for the student
baseline and the distilled cells, over ``train``), ``method_options`` (``{method: {option: value}}``),
``description`` and ``published`` (reference numbers printed beside the cells: ``teacher`` column,
``top1`` per row, ``source``, ``note``). ``fastkd grid --recipe NAME`` takes a shipped name or a path.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from typing import List

from fastkd.errors import UserError
from fastkd.safe_paths import plain_name

KEYS = {"description", "teachers", "student", "methods", "seeds", "train", "teacher_train", "student_train",
        "method_options", "published"}


def recipe_names() -> List[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_path: str) -> dict:
    """The recipe named ``name_or_path`` (shipped) or stored at that path, checked for unknown keys."""
    if os.path.isfile(name_or_path):
        text, where = open(name_or_path).read(), name_or_path
    elif name_or_path in recipe_names():
        text, where = resources.files(__name__).joinpath(f"{name_or_path}.json").read_text(), name_or_path
    else:
        raise UserError(f"--recipe {name_or_path!r} is neither a file nor a shipped recipe; shipped: "
                        f"{', '.join(recipe_names())}")
    try:
        recipe = json.loads(text)
    except ValueError as exc:
        raise UserError(f"recipe {where} is not valid JSON ({exc}); fix the file")
    if not isinstance(recipe, dict):
        raise UserError(f"recipe {where} must be a JSON object with keys among {', '.join(sorted(KEYS))}")
    unknown = set(recipe) - KEYS
    if unknown:
        raise UserError(f"recipe {where} has unknown key(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(sorted(KEYS))}")
    _check_names(recipe, f"recipe {where}")
    return recipe


def _check_names(recipe: dict, where: str) -> None:
    """Names a grid turns into folders (``<out>/<teacher>/<method>/seed<seed>``): plain names and integer
    seeds only, so a recipe never makes a grid write outside its folder."""
    for key in ("teachers", "methods", "seeds"):
        if key in recipe and not isinstance(recipe[key], list):
            raise UserError(f"{where}: {key} must be a JSON list; fix the file")
    for t in recipe.get("teachers", []):
        plain_name(t, "teacher", where)
    if "student" in recipe:
        plain_name(recipe["student"], "student", where)
    for m in recipe.get("methods", []):
        plain_name(m, "method", where)
    for s in recipe.get("seeds", []):
        if not isinstance(s, int) or isinstance(s, bool):
            raise UserError(f"{where}: seed {s!r} is not an integer; fix the file")
