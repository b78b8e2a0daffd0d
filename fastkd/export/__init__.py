"""``fastkd export``: a trained student alone, in inference mode, as a file other tools run.

A fastkd checkpoint's student is rebuilt on the CPU in float32 (:mod:`.source`) and written as one of
:data:`FORMATS` (:mod:`.formats`): ``safetensors`` (its state dict, with the metadata to rebuild it),
``torchscript`` (traced and frozen, ``torch.jit.load``-able) or ``onnx`` (a dynamic batch axis, run by ONNX
Runtime; needs the optional packages of ``pip install 'fastkd[export]'``). Before anything is written, the
exported model is run (:mod:`.runtime`) on a batch of real evaluation views of the run's data against the PyTorch
model (:mod:`.check`); an export whose logits differ by more than ``--atol`` is refused and nothing is written.
Beside the file ``F`` goes ``F.json`` (:mod:`.sidecar`): its input size, layout and normalisation, the checkpoint
it came from and the check's result. ``fastkd eval`` evaluates such a file like a checkpoint
(:mod:`.recognise`, :mod:`.evaluate`).

This package imports nothing from ``fastkd.cli`` or ``fastkd.experiments``; it stays light to import (the
command line reads :data:`FORMATS` at start-up): the modules that need torch are imported by name.
"""
from __future__ import annotations

FORMATS = ("safetensors", "torchscript", "onnx")
KIND = "fastkd-export"  # the "kind" of every description fastkd export writes
