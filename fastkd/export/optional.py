"""The optional packages ONNX export needs (``pip install 'fastkd[export]'``; scripts/setup.sh installs them)."""
from __future__ import annotations

import importlib

from fastkd.errors import UserError

INSTALL = "pip install 'fastkd[export]' (scripts/setup.sh installs it)"


def onnx_package(name: str, purpose: str = "--format onnx"):
    """The module ``name`` (``onnx``, ``onnxruntime``, ``onnxscript``), or a one-line error saying how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{purpose} needs the {name} package, which is not installed; {INSTALL}") from None


def require_onnx(purpose: str = "--format onnx") -> None:
    """Both packages an ONNX export needs: onnx writes it, onnxruntime runs its check."""
    for name in ("onnx", "onnxruntime"):
        onnx_package(name, purpose)
