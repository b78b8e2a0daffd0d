"""The weights files people have, read without network and without running pickled code.

:func:`read_weights` turns any of them into ``(state_dict, WeightsInfo)``:

- ``.safetensors`` (``safetensors.torch.load`` on the bytes); fastkd's own (``model.safetensors`` beside every
  ``checkpoint.pt``) name the architecture, class count and stem in their metadata;
- ``.pt`` / ``.pth`` / ``.bin`` state dicts, loaded ``weights_only`` (a crafted pickle is refused, never run),
  also nested under ``state_dict`` / ``model`` / ``state_dict_ema`` / ``model_ema`` as timm and others save;
- a timm / Hugging Face-style folder: ``model.safetensors`` or ``pytorch_model.bin``, with ``config.json``
  (timm's ``"architecture": "convnext_tiny"`` means ``timm:convnext_tiny``);
- fastkd checkpoints (``checkpoint.pt``).

The prefixes wrappers add (``module.`` of DDP, ``model.``, ``_orig_mod.`` of ``torch.compile``) are stripped when
every key carries them. :func:`read_bytes` reads the input once: a teacher cache hashes exactly the bytes the
teacher is loaded from (for a folder, the weights file's and config.json's, in one bundle).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from fastkd.errors import UserError

from . import checkpoint

KINDS = ("a .safetensors file, a .pt/.pth/.bin state dict, a folder holding model.safetensors or pytorch_model.bin "
         "(with config.json), or a fastkd checkpoint")
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference
PREFIXES = ("module.", "model.", "_orig_mod.")
NESTED = ("state_dict", "model", "state_dict_ema", "model_ema")  # where training scripts keep the weights
_BUNDLE = b"fastkd-weights-folder\n"  # read_bytes of a folder: this, a JSON line of (name, size), the files


@dataclass
class WeightsInfo:
    """What a weights input says about the network it holds (None: it does not say)."""

    kind: str  # "safetensors", "state dict", "fastkd checkpoint"; "... in a folder" for a folder
    arch: Optional[str] = None  # a create_model name
    fastkd: bool = False  # written by fastkd: arch, num_classes and low_res are those of the trained network
    num_classes: Optional[int] = None
    low_res: Optional[bool] = None
    res: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    stripped: str = ""  # the prefix removed from every key ("module." ...)


def read_bytes(path: Optional[str]) -> bytes:
    """The bytes of weights input ``path`` (a file, or a folder's weights file and config.json bundled)."""
    if not path or not os.path.exists(path):
        raise UserError(f"weights {path} do not exist; give {KINDS}")
    if os.path.isdir(path):
        return _folder_bytes(path)
    with open(path, "rb") as f:
        return f.read()


def _folder_bytes(path: str) -> bytes:
    weights = next((n for n in FOLDER_WEIGHTS if os.path.isfile(os.path.join(path, n))), None)
    if weights is None:
        raise UserError(f"folder {path} holds no {' or '.join(FOLDER_WEIGHTS)}; give a folder with one of them "
                        "(and config.json) or the weights file itself")
    names = [weights] + (["config.json"] if os.path.isfile(os.path.join(path, "config.json")) else [])
    contents = []
    for name in names:
        with open(os.path.join(path, name), "rb") as f:
            contents.append(f.read())
    header = json.dumps([[n, len(c)] for n, c in zip(names, contents)]).encode() + b"\n"
    return b"".join([_BUNDLE, header, *contents])


def _unbundle(data: bytes) -> Dict[str, bytes]:
    end = data.index(b"\n", len(_BUNDLE))
    files, pos = {}, end + 1
    for name, size in json.loads(data[len(_BUNDLE):end]):
        files[name] = data[pos:pos + size]
        pos += size
    return files


def read_weights(path: str, data: Optional[bytes] = None) -> Tuple[Dict[str, torch.Tensor], WeightsInfo]:
    """The tensors of weights input ``path`` (or of ``data``, its :func:`read_bytes` read earlier), prefixes
    stripped, and what the input says about its network. A one-line UserError for anything else."""
    data = read_bytes(path) if data is None else data
    if data.startswith(_BUNDLE):
        files = _unbundle(data)
        name = next(n for n in files if n != "config.json")
        state, info = _read_file(os.path.join(path, name), files[name])
        info.kind += " in a folder"
        if "config.json" in files:
            _read_config(os.path.join(path, "config.json"), files["config.json"], info)
    else:
        state, info = _read_file(path, data)
    state, info.stripped = strip_prefixes(state)
    if not state:
        raise UserError(f"{path} holds no tensors; give {KINDS}")
    return state, info


def _read_file(path: str, data: bytes) -> Tuple[Dict[str, torch.Tensor], WeightsInfo]:
    if path.endswith(".safetensors") or _looks_like_safetensors(data):
        return _read_safetensors(path, data)
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":  # torch.save's zip format, or its legacy pickle
        return _read_torch(path, data)
    hint = " (an ONNX model cannot be trained on: give the run's model.safetensors)" if path.endswith(".onnx") else ""
    raise UserError(f"{path} is not a weights file; give {KINDS}{hint}")


def _looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length, then a JSON object."""
    return len(data) >= 10 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] <= len(data) - 8


def _read_safetensors(path: str, data: bytes) -> Tuple[Dict[str, torch.Tensor], WeightsInfo]:
    from safetensors.torch import load

    try:
        size = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
        state = load(data)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not safetensors at all: the user's input
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a valid .safetensors file ({reason}); check the file or download it again")
    info = WeightsInfo("safetensors")
    if "fastkd_model" in meta:
        info.fastkd, info.arch = True, str(_decode(meta["fastkd_model"]))
        for name in ("num_classes", "res", "low_res", "mean", "std"):
            if name in meta:
                setattr(info, name, _decode(meta[name]))
    return state, info


def _decode(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value  # a plain string (a model name)


def _read_torch(path: str, data: bytes) -> Tuple[Dict[str, torch.Tensor], WeightsInfo]:
    obj = checkpoint.load(path, data)  # weights_only: a crafted pickle is refused, not run
    if obj.get("kind") == checkpoint.KIND:
        return obj["model"], WeightsInfo("fastkd checkpoint", obj["model_name"], True, obj["num_classes"],
                                         obj["low_res"], obj.get("res"), obj.get("mean"), obj.get("std"))
    if not _all_tensors(obj):
        nested = next((obj[k] for k in NESTED if isinstance(obj.get(k), dict) and _all_tensors(obj[k])), None)
        if nested is None:
            raise UserError(f"{path} holds neither a fastkd checkpoint nor a state dict (a dict of tensors, also "
                            f"under one of the keys {', '.join(NESTED)}); give {KINDS}")
        obj = nested
    return dict(obj), WeightsInfo("state dict")


def _all_tensors(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_config(path: str, data: bytes, info: WeightsInfo) -> None:
    """timm's hub config.json: ``architecture``, ``num_classes`` and ``pretrained_cfg`` (mean, std, input_size)."""
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or remove it")
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a {type(config).__name__}, not a JSON object; fix or remove it")
    if info.arch is None and isinstance(config.get("architecture"), str):
        info.arch = f"timm:{config['architecture']}"
    pre = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    if info.num_classes is None and isinstance(config.get("num_classes"), int):
        info.num_classes = config["num_classes"]
    info.mean = info.mean or pre.get("mean")
    info.std = info.std or pre.get("std")
    size = pre.get("input_size")
    if info.res is None and isinstance(size, list) and len(size) == 3 and isinstance(size[-1], int):
        info.res = size[-1]


def strip_prefixes(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """``state`` without the wrapper prefixes that every key carries (repeatedly: ``module._orig_mod.``), and
    the prefix removed."""
    stripped = ""
    while state:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state, stripped = {k[len(prefix):]: v for k, v in state.items()}, stripped + prefix
    return state, stripped


def safetensors_bytes(state: Dict[str, torch.Tensor], metadata: Dict[str, object]) -> bytes:
    """``state`` (e.g. a model's state dict, on any device) as a .safetensors file: CPU, contiguous, no shared
    storage; ``metadata`` values JSON-encoded (strings as they are), plus ``format: pt`` for other readers."""
    from safetensors.torch import save

    tensors, seen = {}, set()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    meta = {"format": "pt", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    return save(tensors, metadata=meta)
