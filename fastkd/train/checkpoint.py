"""Checkpoints: written atomically (temporary name, then rename), loaded for resume, eval and teachers."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from fastkd.errors import UserError

KIND = "fastkd-checkpoint"


def save_atomic(path: str, state: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the path of a .pt written by `fastkd train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}); check the file")
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
