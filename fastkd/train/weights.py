"""Loading weights from local files: fastkd checkpoints and torchvision-layout state dicts (no download)."""
from __future__ import annotations

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


def checkpoint_state_dict(path: str) -> dict:
    """The model tensors of a fastkd checkpoint or a (torchvision-layout) state dict file."""
    return _state_dict(checkpoint.load(path), path)


def load_weights(model: nn.Module, path: str, what: str) -> None:
    state = checkpoint_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    bad = list(result.missing_keys) + list(result.unexpected_keys)
    if bad:
        raise UserError(f"{path} does not fit the {what} ({len(result.missing_keys)} missing, "
                        f"{len(result.unexpected_keys)} unexpected keys, e.g. {bad[0]!r}); "
                        f"check --{what} names the architecture the weights were trained for")


def build_teacher(name: Optional[str], path: Optional[str], num_classes: int, low_res: bool) -> nn.Module:
    """A frozen teacher in eval mode. With a fastkd checkpoint the architecture and stem come from it."""
    if not path:
        raise UserError("distillation needs trained teacher weights; pass --teacher-weights PATH "
                        "(a fastkd checkpoint or a torchvision state dict)")
    obj = checkpoint.load(path)
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
    load_weights(model, path, "teacher")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
