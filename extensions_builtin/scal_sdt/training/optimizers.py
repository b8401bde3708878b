"""Optimizers by name."""
from __future__ import annotations

import torch


def make_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise RuntimeError("optimizer adamw8bit needs bitsandbytes: pip install 'scal-sdt[bnb]' "
                               f"(or pip install bitsandbytes) — {e}") from None
        return bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw or adamw8bit")
