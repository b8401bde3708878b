"""An exponential moving average of the trained weights (the weights a fine-tune saves when EMA is on: smoother than
the last step's). Kept in fp32 on the training device, or in the computer's memory to spare the card (slower: the
weights cross to it every step). The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, as in
diffusers' EMAModel, so a run of a few hundred steps is not an average dominated by the untrained start."""
from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: list[torch.Tensor], decay: float, device: torch.device | str | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay {decay} must lie between 0 and 1, e.g. 0.999")
        self.params = list(params)
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().to(device or p.device, torch.float32, copy=True) for p in self.params]

    def rate(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1.0 - self.rate()
        live = [p.detach().to(s.device, torch.float32) for p, s in zip(self.params, self.shadow)]
        torch._foreach_lerp_(self.shadow, live, weight)

    @contextmanager
    def applied(self):
        """The parameters hold the average inside the block (to save or preview it), their own values after. An
        fp32 parameter on the average's device swaps storage with it (no copy, no memory); others (bf16 weights,
        an average in the computer's memory) keep a copy of their own values in the computer's memory meanwhile."""
        swapped, kept = [], []
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                if p.dtype == s.dtype and p.device == s.device:
                    p.data, s.data = s.data, p.data
                    swapped.append((p, s))
                else:
                    kept.append((p, p.detach().to("cpu", copy=True)))
                    p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in swapped:
                    p.data, s.data = s.data, p.data
                for p, own in kept:
                    p.copy_(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"the saved EMA holds {len(state['shadow'])} tensors, this run trains {len(self.shadow)}")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v)
