"""How a teacher signal's rows are stored in the cache: the value arrays of a signal (its dtype, or top-k logits
with their class indices and the log-sum-exp of the rest), their size per view, and the conversion both ways."""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import torch

from fastkd.errors import UserError

from .fingerprint import FP_WORDS

Part = Tuple[str, str, Tuple[int, ...]]  # file suffix, numpy dtype, per-row shape
FLOAT16_MAX = 65504.0


def parts(spec: dict) -> List[Part]:
    """The value arrays of one signal: one, or three for top-k logits."""
    k = int(spec.get("topk") or 0)
    if k:
        return [("values", spec["dtype"], (k,)), ("indices", "int32", (k,)), ("rest", "float32", ())]
    return [("values", spec["dtype"], tuple(spec["shape"]))]


def row_bytes(spec: dict) -> int:
    """Bytes one view of one signal takes: values, CRC (4), view fingerprint (16) and bitmap (1)."""
    return sum(np.dtype(d).itemsize * math.prod(s) for _, d, s in parts(spec)) + 5 + 8 * FP_WORDS


def stored_spec(name: str, spec: dict, storage: dict) -> dict:
    """A signal's stored form: the run's dtype; top-k only for logits."""
    return {"shape": list(spec["shape"]), "dtype": storage["dtype"], "topk": storage["topk"] if name == "logits" else 0}


def encode_rows(spec: dict, t: torch.Tensor, name: str = "", epoch: int = 0, root: str = "") -> List[np.ndarray]:
    """The stored arrays of ``t``'s rows (dtype conversion by torch: numpy's float16 cast is scalar and slow).
    A finite value beyond float16's range in a float16 cache is refused (it would be stored as inf)."""
    t, dtype = t.float().cpu(), getattr(torch, spec["dtype"])
    k = int(spec.get("topk") or 0)
    values = t.topk(k, dim=1) if k else None
    stored = values.values if k else t
    if dtype == torch.float16:
        big = stored.abs().masked_fill(~stored.isfinite(), 0).amax() if stored.numel() else torch.tensor(0.0)
        if float(big) > FLOAT16_MAX:
            raise UserError(f"teacher signal {name} reaches {float(big):.4g} in epoch {epoch + 1}, beyond float16's "
                            f"range (+-{FLOAT16_MAX:.0f}), so the float16 cache {root} would hold inf; fill a new "
                            "--teacher-cache folder with --cache-dtype float32")
    if not k:
        return [t.to(dtype).numpy()]
    indices = values.indices
    rest = t.scatter(1, indices, float("-inf")).logsumexp(1)
    return [values.values.to(dtype).numpy(), indices.int().numpy(), rest.numpy()]


def decode_rows(spec: dict, values: List[torch.Tensor]) -> torch.Tensor:
    """The teacher's rows back from their stored arrays: top-k logits with the rest's log-sum-exp spread evenly over
    the other classes."""
    if not int(spec.get("topk") or 0):
        return values[0].float()
    top, indices, rest = values
    classes = spec["shape"][0]
    fill = rest - math.log(max(classes - top.shape[1], 1))
    full = fill[:, None].expand(len(top), classes).clone()
    return full.scatter_(1, indices.long(), top.float())
