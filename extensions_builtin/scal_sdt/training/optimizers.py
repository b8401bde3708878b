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
    if name == "adafactor":  # factored second moments: a fraction of AdamW's state (transformers' implementation)
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw, adamw8bit or adafactor")
