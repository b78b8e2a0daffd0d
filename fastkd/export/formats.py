"""Writing a network as each format's bytes (nothing touches the disk here: the caller checks, then writes).

- ``safetensors``: the state dict, with the metadata fastkd's ``model.safetensors`` carries (``fastkd_model``,
  ``num_classes``, ``res``, ``low_res``, ``mean``, ``std``) plus ``classes`` and the whole description;
- ``torchscript``: ``torch.jit.trace`` then ``torch.jit.freeze`` without numeric folding (the weights become
  constants, batch norm stays as trained: the logits equal the PyTorch model's exactly); the description is
  the archive's extra file ``fastkd.json``;
- ``onnx``: the TorchScript-based exporter (``dynamo=False``; fast, and exact to ~1e-5 for the seed and zoo
  models on torch 2.14), falling back to the ``torch.export`` one; opset :data:`OPSET`, input ``images`` with a
  dynamic batch axis, output ``logits``; the description is the model's metadata entry ``fastkd.json``.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.train.weights_files import safetensors_bytes

from .optional import onnx_package
from .sidecar import INPUT, OUTPUT

OPSET = 17  # LayerNormalization (vision transformers) needs 17
META = "fastkd.json"  # the description's name inside a torchscript archive or an ONNX model's metadata
SAFETENSORS_META = "fastkd_export"


def serialise(fmt: str, model: nn.Module, example: torch.Tensor, meta: dict) -> Tuple[bytes, dict]:
    """``model`` (eval mode, CPU, float32) as format ``fmt``'s file contents, and the details of how it was
    made; ``example``: a few real inputs (traced formats follow the operations they take)."""
    writers: Dict[str, Callable] = {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracers' deprecation and TracerWarnings: the check decides
        return writers[fmt](model, example, meta)


def _safetensors(model: nn.Module, example: torch.Tensor, meta: dict) -> Tuple[bytes, dict]:
    fields = {k: meta[k] for k in ("num_classes", "res", "low_res", "classes")}
    fields.update(fastkd_model=meta["model_name"], mean=meta["normalisation"]["mean"],
                  std=meta["normalisation"]["std"], **{SAFETENSORS_META: json.dumps(meta)})
    return safetensors_bytes(model.state_dict(), fields), {"tensors": len(model.state_dict())}


def _torchscript(model: nn.Module, example: torch.Tensor, meta: dict) -> Tuple[bytes, dict]:
    traced = torch.jit.trace(model, example, check_trace=False)  # the check below runs it on real views
    frozen = torch.jit.freeze(traced, optimize_numerics=False)
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer, _extra_files={META: json.dumps(meta)})
    return buffer.getvalue(), {"traced_batch": len(example), "frozen": True, "folded_batch_norm": False}


def _onnx(model: nn.Module, example: torch.Tensor, meta: dict) -> Tuple[bytes, dict]:
    onnx = onnx_package("onnx")
    failures = []
    for name, exporter in (("torchscript-based", _onnx_legacy), ("torch.export-based", _onnx_dynamo)):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporters' own progress lines
                data, opset = exporter(model, example)
            break
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter that cannot handle this model: try the next
            failures.append(f"{name}: {_first_line(exc)}")
    else:
        raise UserError(f"{meta['model_name']} cannot be exported to ONNX by torch {torch.__version__} "
                        f"({'; '.join(failures)}); export it with --format torchscript or safetensors")
    proto = onnx.load_model_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META, json.dumps(meta)
    return proto.SerializeToString(), {"exporter": name, "opset": opset, "input": INPUT, "output": OUTPUT,
                                       "dynamic_axes": {INPUT: {"0": "N"}, OUTPUT: {"0": "N"}}}


def _onnx_legacy(model: nn.Module, example: torch.Tensor) -> Tuple[bytes, int]:
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                      output_names=[OUTPUT], dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}})
    return buffer.getvalue(), OPSET


def _onnx_dynamo(model: nn.Module, example: torch.Tensor) -> Tuple[bytes, int]:
    onnx_package("onnxscript", "the torch.export-based ONNX exporter")
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False,
                                verbose=False)
    proto = program.model_proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return proto.SerializeToString(), int(opset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
