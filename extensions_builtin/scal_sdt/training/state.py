"""The resumable state of a run: trainable tensors, optimizer, scaler, RNG, data order. One file, written atomically."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from ..files import atomic_path

STATE_FILE = "state.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(run_dir: Path, state: dict) -> Path:
    path = run_dir / STATE_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (train once without --resume first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged state file must not be half-loaded
        raise RuntimeError(f"cannot resume from {path}: the file is damaged ({e})") from e
