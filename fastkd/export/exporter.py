"""``fastkd export``'s one function: checkpoint -> checked file + description, or nothing at all."""
from __future__ import annotations

import os
from typing import Optional

from fastkd.atomic import atomic_write_bytes, atomic_write_json
from fastkd.errors import UserError
from fastkd.hashing import sha256_file
from fastkd.log import log

from . import FORMATS
from .check import compare, eval_views
from .formats import serialise
from .optional import require_onnx
from .runtime import load_exported
from .sidecar import describe, sidecar, sidecar_path
from .source import load_source

EXAMPLE = 2  # traced formats are traced on this many real views and checked on the whole batch (another N)


def export_checkpoint(checkpoint: str, fmt: str, out: str, res: Optional[int] = None, data: Optional[str] = None,
                      atol: float = 1e-4, batch_size: int = 32, backend: str = "torch",
                      overwrite: bool = False) -> dict:
    """Write the student of ``checkpoint`` as ``fmt`` to ``out`` and its description to ``out.json``, once its
    logits on a batch of real evaluation views are within ``atol`` of the PyTorch model's; else a one-line
    error and nothing written. Returns the summary ``fastkd export`` prints."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    _check_out(out, checkpoint, overwrite)
    source = load_source(checkpoint, res)
    log(f"export: building {source.name} ({source.state['num_classes']} classes) from {checkpoint}, "
        f"input {source.res}x{source.res}")
    views = eval_views(source, data, batch_size, backend)
    meta = describe(source, fmt, sha256_file(checkpoint))
    log(f"export: exporting {fmt}")
    blob, details = serialise(fmt, source.model, views.images[:EXAMPLE], meta)
    result = compare(source.model, load_exported(fmt, blob, meta), views.images)
    diff, agree = result["max_abs_diff"], result["top1_agreement"]
    log(f"export: checking: max abs diff {diff:.3g} on the logits of {result['batch_size']} {views.split} views "
        f"(largest logit {result['max_abs_logit']:.3g}), top-1 agreement {agree:.1%}")
    if not diff <= atol:  # NaN too
        raise UserError(f"the {fmt} export's logits differ from the PyTorch model's by {diff:.3g} > --atol {atol:g} "
                        f"on {result['batch_size']} {views.split} views; nothing written to {out} (try another "
                        "--format, or raise --atol to accept it)")
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    atomic_write_bytes(out, blob)
    check = {"data": os.path.abspath(views.data), "split": views.split, "atol": atol, **result}
    atomic_write_json(sidecar_path(out), sidecar(meta, out, sha256_file(out), details, check))
    log(f"export: wrote {out} and {sidecar_path(out)}")
    return {"out": out, "sidecar": sidecar_path(out), "format": fmt, "model": source.name, "res": source.res,
            "max_abs_diff": diff, "top1_agreement": agree, "batch_size": result["batch_size"]}


def _check_out(out: str, checkpoint: str, overwrite: bool) -> None:
    if not out or os.path.isdir(out):
        raise UserError(f"--out {out!r} is a folder; give the file to write, e.g. {os.path.join(out or '.', 'model')}"
                        ".onnx")
    if os.path.exists(checkpoint) and os.path.exists(out) and os.path.samefile(out, checkpoint):
        raise UserError(f"--out {out} is the checkpoint itself; write the export to another file")
    taken = [p for p in (out, sidecar_path(out)) if os.path.exists(p)]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} exists; pass --overwrite to replace it or choose another --out")
