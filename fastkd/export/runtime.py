"""Running an exported file: each format loaded back as a module mapping images to logits (what the check and
``fastkd eval`` run). ONNX runs in ONNX Runtime (CPUExecutionProvider); TorchScript through ``torch.jit.load``;
safetensors in the network fastkd builds from its metadata. Nothing pickled is loaded."""
from __future__ import annotations

import io
from typing import Union

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import create_model

from .optional import onnx_package

Blob = Union[str, bytes]  # a file's path, or its contents


class _Wrapped(nn.Module):
    """A callable outside the module tree (``train()``/``eval()`` do not reach it), as an ``nn.Module``."""

    def __init__(self, run, device: torch.device):
        super().__init__()
        self._run = [run]  # a list: not registered as a child
        self.device = torch.device(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run[0](images)


class _OnnxRun:
    def __init__(self, session):
        self.session, self.input = session, session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: x})[0]).to(images.device)


def load_exported(fmt: str, blob: Blob, meta: dict, device="cpu", where: str = "") -> nn.Module:
    """The exported model in ``blob`` (a path or the file's bytes) of format ``fmt``, described by ``meta``, in
    eval mode; ``device``: where its inputs and outputs lie (ONNX Runtime itself runs on the CPU)."""
    where = where or (blob if isinstance(blob, str) else f"the {fmt} export")
    loaders = {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx}
    try:
        model = loaders[fmt](blob, meta, torch.device(device))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: the user's input
        text = str(exc).strip()
        reason = text.splitlines()[0][:300] if text else type(exc).__name__
        raise UserError(f"{where} is not a readable {fmt} export ({reason}); export the checkpoint again")
    return model.eval()


def _safetensors(blob: Blob, meta: dict, device: torch.device) -> nn.Module:
    from safetensors.torch import load, load_file

    state = load_file(blob) if isinstance(blob, str) else load(blob)
    model = create_model(meta["model_name"], int(meta["num_classes"]), bool(meta["low_res"]), res=int(meta["res"]))
    model.load_state_dict(state)
    return model.to(device)


def _torchscript(blob: Blob, meta: dict, device: torch.device) -> nn.Module:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(blob if isinstance(blob, str) else io.BytesIO(blob), map_location=device)
    return _Wrapped(module, device)


def _onnx(blob: Blob, meta: dict, device: torch.device) -> nn.Module:
    ort = onnx_package("onnxruntime", "running an ONNX export")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session notices on stderr
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    return _Wrapped(_OnnxRun(session), device)
