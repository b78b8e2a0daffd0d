"""Loading local weights into a network (no download, no pickled code: :mod:`.weights_files` reads the formats).

A teacher takes every tensor of its file. A student's ``--pretrained`` may differ in two ways, each reported in
one line: a classifier of another class count (shape differs only in dim 0, the model's dim 0 being the data's
class count) is left at its initialisation, a new head for fine-tuning; the seed models' low-resolution stem
(a first conv of another kernel size) keeps its initialisation. Any other key that does not fit (missing,
unexpected, another shape) is a one-line error naming up to three of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import canonical_name, create_model

from .weights_files import PREFIXES, WeightsInfo, read_bytes, read_weights

FORMATS = "a fastkd checkpoint or model.safetensors, a .safetensors/.pt/.pth/.bin state dict, or a timm hub folder"


def read_weights_file(path: str) -> bytes:
    """The bytes of weights input ``path``, read once: a teacher cache hashes exactly the bytes it loads (for a
    folder, its weights file's and config.json's)."""
    return read_bytes(path)


def checkpoint_state_dict(path: str, data: Optional[bytes] = None) -> dict:
    """The model tensors of any weights input (or of its bytes ``data``), wrapper prefixes stripped."""
    return read_weights(path, data)[0]


@dataclass
class Fit:
    """How a file's tensors fitted a network; ``head`` and ``stem`` keys kept their initialisation."""

    loaded: int
    head: List[str] = field(default_factory=list)  # a classifier of another class count (--pretrained)
    head_classes: Optional[int] = None  # the file's class count for that classifier
    stem: List[str] = field(default_factory=list)  # a stem of another kernel size (the low-resolution stem)

    @property
    def left(self) -> List[str]:
        return sorted(self.head + self.stem)

    @property
    def head_module(self) -> str:
        return ", ".join(sorted({k.rsplit(".", 1)[0] for k in self.head}))


def _stem_keys(model: nn.Module) -> List[str]:
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    return [] if first is None else [f"{first}.weight", f"{first}.bias"]


def _align_prefix(state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A network whose own keys all carry a wrapper prefix (which the reader stripped) gets it back."""
    if any(k in own for k in state):
        return state
    prefix = next((p for p in PREFIXES if own and all(k.startswith(p) for k in own)), None)
    return {prefix + k: v for k, v in state.items()} if prefix else state


def fit_state(model: nn.Module, state: Dict[str, torch.Tensor], path: str, what: str,
              num_classes: Optional[int] = None, info: Optional[WeightsInfo] = None, new_head: bool = False) -> Fit:
    """Load ``state`` into ``model`` (``what``: "teacher" or "student"), or raise a one-line UserError.
    ``new_head`` (``--pretrained``): a classifier of another class count and a stem of another kernel size are
    left at their initialisation; otherwise such a classifier is an error naming both class counts."""
    own = model.state_dict()
    state = _align_prefix(state, own)
    shape = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state}
    mismatched = [k for k, (a, b) in shape.items() if a != b]
    head = [k for k in mismatched if num_classes is not None and shape[k][1][:1] == (num_classes,)
            and shape[k][0][1:] == shape[k][1][1:]]
    if len({shape[k][0][0] for k in head}) > 1:
        head = []  # not one classifier: plain mismatches
    stem = [k for k in mismatched if new_head and k in _stem_keys(model) and shape[k][0][:2] == shape[k][1][:2]]
    fit = Fit(sum(1 for k in shape if k not in mismatched), head, shape[head[0]][0][0] if head else None, stem)
    if head and not new_head:
        raise UserError(f"{path} predicts {fit.head_classes} classes (classifier {fit.head_module}) but the data has "
                        f"{num_classes}; a {what} must predict this dataset's classes: fine-tune it first "
                        f"(fastkd train --student NAME --pretrained {path}) and give that run's model.safetensors")
    problems = ([f"missing {k!r}" for k in own if k not in state and not k.endswith("num_batches_tracked")]
                + [f"unexpected {k!r}" for k in state if k not in own]
                + [f"{k!r} of shape {list(shape[k][0])}, not {list(shape[k][1])}"
                   for k in mismatched if k not in head and k not in stem])
    name = getattr(model, "fastkd_name", type(model).__name__)
    holds = ""
    if info is not None and info.arch and info.arch.lower() != str(name).lower():
        holds = f"; the file names the architecture {info.arch}"
    listed = f"{len(problems)} keys do not fit: {', '.join(problems[:3])}{', ...' if len(problems) > 3 else ''}"
    if fit.loaded == 0:
        raise UserError(f"{path}: no tensor fits the {what} {name} ({listed}){holds}; give weights of the same "
                        "architecture")
    if problems:
        raise UserError(f"{path} does not fit the {what} {name} ({listed}){holds}; check --{what} names the "
                        "architecture the weights were trained for")
    keep = set(head) | set(stem)
    model.load_state_dict({k: v for k, v in state.items() if k not in keep}, strict=False)
    return fit


def load_weights(model: nn.Module, path: str, what: str, data: Optional[bytes] = None) -> None:
    """Load every tensor of ``path`` (or of its bytes ``data``, read earlier) into ``model``."""
    state, info = read_weights(path, data)
    fit_state(model, state, path, what, info=info)


def load_pretrained(model: nn.Module, path: str, num_classes: int) -> Fit:
    """``--pretrained``: ``path`` into the student ``model`` for ``num_classes`` classes; a classifier of another
    class count and a low-resolution stem keep their initialisation (see :class:`Fit`)."""
    state, info = read_weights(path)
    return fit_state(model, state, path, "student", num_classes, info, new_head=True)


def build_teacher(name: Optional[str], path: Optional[str], num_classes: int, low_res: bool,
                  data: Optional[bytes] = None, res: Optional[int] = None) -> nn.Module:
    """A frozen teacher in eval mode. Weights written by fastkd (a checkpoint, its model.safetensors) name the
    architecture and stem; a timm hub folder names the architecture. ``data``: the input's bytes, read before
    (then it is not read again)."""
    if not path:
        raise UserError(f"distillation needs trained teacher weights; pass --teacher-weights PATH ({FORMATS})")
    state, info = read_weights(path, data)
    if info.fastkd:
        arch = canonical_name(info.arch)
        if name and canonical_name(name) != arch:
            raise UserError(f"--teacher {name} but {path} holds a {arch}; pass --teacher {arch} or other weights")
        if info.num_classes != num_classes:
            raise UserError(f"teacher {path} predicts {info.num_classes} classes but the data has {num_classes}; "
                            "use a teacher trained on this dataset")
        name, low_res = arch, low_res if info.low_res is None else bool(info.low_res)
    name = name or info.arch
    if not name:
        raise UserError("pass --teacher NAME: the weights file does not say which architecture it holds")
    model = create_model(name, num_classes, low_res, res=res)  # res: zoo models' input side
    fit_state(model, state, path, "teacher", num_classes, info)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
