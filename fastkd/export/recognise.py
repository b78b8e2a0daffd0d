"""Is a file ``fastkd eval --checkpoint`` is given an export? By its description ``F.json`` (whose sha256 must be
the file's), else by what the file itself holds: a TorchScript archive's ``fastkd.json``, a safetensors
file's fastkd metadata (``fastkd export``'s, or the ``model.safetensors`` beside every checkpoint), an ``.onnx``
model's metadata entry. A ``torch.save`` file (a checkpoint) is not an export: the caller loads it as one."""
from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Optional

from fastkd.errors import UserError
from fastkd.hashing import sha256_file

from . import FORMATS, KIND
from .formats import META, SAFETENSORS_META
from .optional import onnx_package
from .sidecar import sidecar_path

NEEDED = ("model_name", "num_classes", "low_res", "res")
MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one


@dataclass
class Exported:
    path: str
    format: str
    meta: dict  # at least NEEDED: the network's name, classes, stem and input side


def find_export(path: str) -> Optional[Exported]:
    """The export at ``path``, or None when it is not one (a missing file, a checkpoint, a state dict)."""
    if not os.path.isfile(path):
        return None
    side = sidecar_path(path)
    meta = _json_file(side) if os.path.isfile(side) else None
    if isinstance(meta, dict) and meta.get("kind") == KIND:
        if meta.get("sha256") != sha256_file(path):
            raise UserError(f"{side} describes another file than {path} (its sha256 differs); export the checkpoint "
                            f"again or remove {side}")
        return _exported(path, meta.get("format"), meta, side)
    if zipfile.is_zipfile(path):
        return _torchscript(path)
    found = _safetensors(path)
    if found is None and path.lower().endswith(".onnx"):
        found = _onnx(path)
    return found


def _exported(path: str, fmt, meta, where: str) -> Exported:
    missing = [k for k in NEEDED if k not in meta] if isinstance(meta, dict) else list(NEEDED)
    if fmt not in FORMATS or missing:
        raise UserError(f"{where} is not a complete fastkd export description (format {fmt!r}"
                        f"{', no ' + ', '.join(missing) if missing else ''}); export the checkpoint again")
    return Exported(path, fmt, meta)


def _json_file(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # not a description: the file is judged by its contents


def _torchscript(path: str) -> Optional[Exported]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if not any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return None  # torch.save's archive: a checkpoint or a state dict
        extra = next((n for n in names if n.endswith(f"/extra/{META}")), None)
        if extra is None:
            raise UserError(f"{path} is a TorchScript file not written by `fastkd export`: it does not say which "
                            "network, classes and input size it holds; export a fastkd checkpoint")
        return _exported(path, "torchscript", _loads(z.read(extra), path), path)


def _safetensors(path: str) -> Optional[Exported]:
    with open(path, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= size <= MAX_HEADER:
            return None
        header = f.read(size)
    if header[:1] != b"{":
        return None
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return None
    if SAFETENSORS_META in meta:
        return _exported(path, "safetensors", _loads(meta[SAFETENSORS_META], path), path)
    if "fastkd_model" in meta:  # model.safetensors of a run: its metadata name the network
        fields = {k: _loads(meta[k], path) for k in ("num_classes", "res", "low_res") if k in meta}
        return _exported(path, "safetensors", {"model_name": meta["fastkd_model"], **fields}, path)
    return None


def _onnx(path: str) -> Exported:
    ort = onnx_package("onnxruntime", "evaluating an ONNX file")
    try:
        meta = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    except Exception as exc:  # noqa: BLE001 - not an ONNX model at all
        raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__}); export the checkpoint again")
    if META not in meta:
        raise UserError(f"{path} is an ONNX model not written by `fastkd export` and has no {sidecar_path(path)}: "
                        "it does not say which classes and input size it has; export a fastkd checkpoint")
    return _exported(path, "onnx", _loads(meta[META], path), path)


def _loads(text, path: str):
    try:
        return json.loads(text)
    except ValueError:
        raise UserError(f"{path} holds a damaged fastkd description; export the checkpoint again") from None
