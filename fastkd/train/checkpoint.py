"""Checkpoints: written atomically, loaded without running code, for resume, eval and teachers.

Every file a user names is loaded with ``torch.load(weights_only=True)``: tensors and plain Python values
only, so a crafted pickle (``__reduce__`` -> ``os.system``) is refused instead of run. fastkd's own
checkpoints hold nothing else: RNG states are stored as tensors, lists and numbers.
"""
from __future__ import annotations

import io
import os
import pickle
import random
from typing import Optional

import numpy as np
import torch

from fastkd.atomic import atomic_torch_save
from fastkd.errors import UserError

KIND = "fastkd-checkpoint"


def save_atomic(path: str, state: dict) -> None:
    """The previous file stays whole until the new one is complete, whatever kills the process in between."""
    atomic_torch_save(path, state)


def load(path: str, data: Optional[bytes] = None) -> dict:
    """A dict of tensors and plain values from ``path`` (or from ``data``, that file's bytes read earlier); a
    one-line UserError for anything else."""
    if data is None and not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the path of a .pt written by `fastkd train`")
    try:
        state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds Python objects besides tensors and plain values, which could run code when "
                        "loaded; fastkd loads weights only: save a state dict (torch.save(model.state_dict(), ...))")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}); check the file")
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict or a fastkd checkpoint")
    return state


def rng_state() -> dict:
    """Every RNG stream a run draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
