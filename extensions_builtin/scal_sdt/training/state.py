"""Random-number state of a run, saved in its checkpoints so that a resumed run continues exactly."""
from __future__ import annotations

import random

import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(as_tuple(state["python"]))


def as_tuple(x):
    """Lists back into the tuples ``random.setstate`` wants (a saved state may come back with lists)."""
    return tuple(as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
