"""What an exported file is, written beside it as ``F.json`` (and, for other tools, inside it).

:func:`describe` is everything a caller needs to feed the file: the input (``[N, 3, R, R]``, NCHW, float32, RGB;
any batch size), how pixels become that input (fastkd's evaluation view, then the dataset's normalisation), the
outputs (logits over ``classes``), and where the file came from. :func:`sidecar` adds the file's sha256 (which
``fastkd eval`` compares, so a description never serves another file) and the check's result.
"""
from __future__ import annotations

import os

from fastkd import __version__
from fastkd.pipelines.view_policy import ViewPolicy

from . import KIND
from .source import Source

INPUT, OUTPUT = "images", "logits"  # the ONNX graph's input and output names
# the loaders' normalisation (pipelines/loader.py): x.sub_(255 * mean).div_(255 * std) on float32 pixel values
FORMULA = ("x = (pixel / 255 - mean) / std per RGB channel, pixel the 0..255 value of the view; fastkd's loaders "
           "compute it in float32 as (pixel - 255 * mean) / (255 * std)")
LOAD = {
    "safetensors": "fastkd.models.create_model(model_name, num_classes, low_res, res=res) then "
                   "load_state_dict(safetensors.torch.load_file(F)) and .eval()",
    "torchscript": "torch.jit.load(F) (in inference mode already)",
    "onnx": f"onnxruntime.InferenceSession(F).run(None, {{'{INPUT}': x}})[0]",
}


def view_of(res: int) -> dict:
    """The evaluation view fastkd feeds a model of input side ``res`` (pipelines/view_policy.py)."""
    policy = ViewPolicy.for_resolution(res, train=False)
    resize = f"shorter side resized to {policy.base} px (bilinear, antialiased)"
    if policy.kind == "pad_crop":
        return {"resize_shorter_side": policy.base, "centre_crop": res,
                "description": f"{resize}, then the centred {res}x{res} square"}
    return {"resize_shorter_side": policy.base, "centre_crop": res,
            "description": f"{resize} (res / 0.875), then the centred {res}x{res} crop (torchvision's Resize + "
                          "CenterCrop)"}


def describe(source: Source, fmt: str, checkpoint_sha256: str) -> dict:
    """The description of ``source`` exported as ``fmt`` (also embedded in the file itself)."""
    state, res = source.state, source.res
    return {
        "kind": KIND,
        "format": fmt,
        "model_name": source.name,
        "num_classes": int(state["num_classes"]),
        "classes": [str(c) for c in state.get("classes") or []],
        "low_res": bool(state["low_res"]),
        "res": res,
        "input": {"name": INPUT, "shape": ["N", 3, res, res], "layout": "NCHW", "dtype": "float32",
                  "channels": "RGB", "batch": "any N >= 1"},
        "output": {"name": OUTPUT, "shape": ["N", int(state["num_classes"])], "dtype": "float32",
                   "meaning": "logits over classes (softmax for probabilities)"},
        "normalisation": {"mean": [float(m) for m in state.get("mean") or []],
                          "std": [float(s) for s in state.get("std") or []], "formula": FORMULA},
        "view": view_of(res),
        "load": LOAD[fmt],
        "fastkd_version": __version__,
        "checkpoint": {"path": os.path.abspath(source.path), "sha256": checkpoint_sha256},
    }


def sidecar_path(path: str) -> str:
    return path + ".json"


def sidecar(meta: dict, path: str, sha256: str, details: dict, check: dict) -> dict:
    """``F.json``: the description, the written file's name and sha256, the format's details, the check."""
    return {**meta, "file": os.path.basename(path), "sha256": sha256, meta["format"]: details, "check": check}
