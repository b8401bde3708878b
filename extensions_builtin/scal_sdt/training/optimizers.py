"""Optimizers by name: torch's AdamW, bitsandbytes' 8-bit AdamW, transformers' Adafactor, and from
``pytorch-optimizer`` (one well-kept collection) Prodigy, Lion, D-Adaptation Adam, CAME and schedule-free AdamW.

Learning-rate-free optimizers (Prodigy, D-Adaptation) estimate the step size themselves; their ``lr`` is a multiplier
whose documented value is 1.0, which a run gets unless the user set a rate (:func:`effective_lr`). Schedule-free
AdamW keeps two sequences of weights: the loop trains on one and saves, previews and validates the average
(:func:`evaluating`). Every optimizer's state is in its ``state_dict``, which a checkpoint saves for an exact resume.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy", "lion", "dadapt-adam", "came", "schedulefree-adamw")
#: the class each makes (its name is what the WebUI's hypernetwork .pt.optim records)
OPTIMIZER_CLASSES = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "adafactor": "Adafactor", "prodigy": "Prodigy",
                     "lion": "Lion", "dadapt-adam": "DAdaptAdam", "came": "CAME",
                     "schedulefree-adamw": "ScheduleFreeAdamW"}
LR_FREE = ("prodigy", "dadapt-adam")  # lr is a multiplier of the rate they find; 1.0 is the documented value
#: optimizers that step all weights together (their estimate spans the group) or switch weights for evaluation: not
#: with fused_backward, which gives every weight its own optimizer
WHOLE_GROUP = LR_FREE + ("schedulefree-adamw",)


def make_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float,
                   warmup_steps: int = 0) -> torch.optim.Optimizer:
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
    if name in OPTIMIZERS:
        import pytorch_optimizer as po

        if name == "prodigy":  # the authors' advice for diffusion models: bias correction, safeguarded warm-up
            return po.Prodigy(groups, lr=lr, weight_decay=weight_decay, bias_correction=True,
                              safeguard_warmup=warmup_steps > 0)
        if name == "dadapt-adam":
            return po.DAdaptAdam(groups, lr=lr, weight_decay=weight_decay, weight_decouple=True)
        if name == "lion":
            return po.Lion(groups, lr=lr, weight_decay=weight_decay)
        if name == "came":
            return po.CAME(groups, lr=lr, weight_decay=weight_decay)
        if name == "schedulefree-adamw":
            return po.ScheduleFreeAdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def effective_lr(opts) -> tuple[str, str | None]:
    """The learning rate a run uses and, when it differs from the option as written, why: a learning-rate-free
    optimizer gets its documented 1.0 unless the user gave a rate (one that is not the trainer's default)."""
    if opts.optimizer not in LR_FREE:
        return opts.lr, None
    default = next(f.default for f in dataclasses.fields(opts) if f.name == "lr")
    given = opts.lr.strip().lower()
    if given in ("auto", str(default).strip().lower()):
        return "1.0", (f"optimizer {opts.optimizer} finds its own step size: lr 1.0 (its documented default; "
                       f"--lr scales it)")
    return opts.lr, None


@contextlib.contextmanager
def evaluating(optimizer, params: list[torch.Tensor]):
    """The weights to save, preview and validate: schedule-free optimizers' average (``optimizer.eval()``); back to
    the training weights afterwards, bit for bit. Other optimizers: nothing changes."""
    if not callable(getattr(optimizer, "eval", None)) or not callable(getattr(optimizer, "train", None)):
        yield
        return
    kept = [p.detach().clone() for p in params]
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()
        with torch.no_grad():
            for p, v in zip(params, kept):
                p.copy_(v)
