"""Loading weights from local files: fastkd checkpoints and torchvision-layout state dicts (no download)."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import MODELS, create_model

from . import checkpoint


def _state_dict(obj: dict, path: str) -> dict:
    if obj.get("kind") == checkpoint.KIND:
        return obj["model"]
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds neither a fastkd checkpoint nor a state dict; give a .pt/.pth of weights")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def read_weights_file(path: str) -> bytes:
    """The bytes of weights file ``path``, read once: a teacher cache hashes exactly the bytes it loads."""
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the path of a .pt written by `fastkd train`")
    with open(path, "rb") as f:
        return f.read()


def checkpoint_state_dict(path: str, data: Optional[bytes] = None) -> dict:
    """The model tensors of a fastkd checkpoint or a (torchvision-layout) state dict file (or its bytes ``data``)."""
    return _state_dict(checkpoint.load(path, data), path)


def load_weights(model: nn.Module, path: str, what: str, data: Optional[bytes] = None) -> None:
    """Load ``path`` (or, given, its bytes ``data``, read earlier) into ``model``."""
    _apply(model, checkpoint_state_dict(path, data), path, what)


def _apply(model: nn.Module, state: dict, path: str, what: str) -> None:
    result = model.load_state_dict(state, strict=False)
    bad = list(result.missing_keys) + list(result.unexpected_keys)
    if bad:
        raise UserError(f"{path} does not fit the {what} ({len(result.missing_keys)} missing, "
                        f"{len(result.unexpected_keys)} unexpected keys, e.g. {bad[0]!r}); "
                        f"check --{what} names the architecture the weights were trained for")


def build_teacher(name: Optional[str], path: Optional[str], num_classes: int, low_res: bool,
                  data: Optional[bytes] = None) -> nn.Module:
    """A frozen teacher in eval mode. With a fastkd checkpoint the architecture and stem come from it.
    ``data``: the file's bytes, read before (then the file is not read again)."""
    if not path:
        raise UserError("distillation needs trained teacher weights; pass --teacher-weights PATH "
                        "(a fastkd checkpoint or a torchvision state dict)")
    obj = checkpoint.load(path, data)
    if obj.get("kind") == checkpoint.KIND:
        arch = obj["model_name"]
        if name and MODELS.canonical(name) != arch:
            raise UserError(f"--teacher {name} but {path} holds a {arch}; pass --teacher {arch} or other weights")
        if obj["num_classes"] != num_classes:
            raise UserError(f"teacher {path} predicts {obj['num_classes']} classes but the data has {num_classes}; "
                            "use a teacher trained on this dataset")
        name, low_res = arch, obj["low_res"]
    if not name:
        raise UserError("pass --teacher NAME: the weights file does not say which architecture it holds")
    model = create_model(name, num_classes, low_res)
    _apply(model, _state_dict(obj, path), path, "teacher")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
