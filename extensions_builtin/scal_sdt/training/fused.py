"""The optimizer step inside the backward pass (kohya's --fused_backward_pass, PyTorch's "optimizer in backward"
recipe): every parameter has its own optimizer, stepped from a hook the moment its gradient is complete, and the
gradient is freed at once. The model's gradients are never held all together — for a full fine-tune that is a
weights-sized buffer less (SDXL's UNet: 5 GB in bf16, 10 GB in fp32), which is what puts SDXL under 10 GB.

What it gives up, and how the loop copes:
- the whole gradient is never seen, so no norm clipping (value clipping works per parameter);
- gradients cannot be checked before any step: a non-finite element is zeroed in its hook and counted on the
  device, and the loop reports the step as bad afterwards (one sync per step, as without it);
- fp16 without a GradScaler: the loss is scaled by ``loss_scale`` here, each gradient unscaled in its hook, and the
  scale halves after an overflow and doubles after ``GROWTH_INTERVAL`` clean steps (GradScaler's rule);
- with gradient accumulation the hooks step only in the last micro-batch's backward pass (gradients are then held
  between micro-batches, as without it);
- several processes: each gradient is averaged across them in its own hook (one all-reduce per parameter).
"""
from __future__ import annotations

from typing import Callable

import torch

GROWTH_INTERVAL = 2000
FP16_START_SCALE = 2.0 ** 12  # lower than GradScaler's 2**16: an overflow here zeroes gradients instead of a skip


class FusedBackward:
    """Looks like one optimizer to the loop (``param_groups`` with the lr it sets, ``step``/``zero_grad`` that do
    nothing, ``state_dict`` in torch's layout) while the per-parameter optimizers step in the backward pass."""

    def __init__(self, make: Callable[[list[dict]], torch.optim.Optimizer], groups: list[dict],
                 clip_value: float | None = None, loss_scale: float = 1.0, processes=None):
        self.param_groups = [{"params": list(g["params"]), "lr": 0.0} for g in groups]
        self.clip_value = clip_value
        self.loss_scale = loss_scale
        self.dynamic = loss_scale != 1.0
        self.processes = processes
        self.armed = True
        self.clean_steps = 0
        self.optimizers: list[torch.optim.Optimizer] = []
        self.handles = []
        self._bad: torch.Tensor | None = None
        for group in self.param_groups:
            for p in group["params"]:
                optimizer = make([{"params": [p]}])
                self.optimizers.append(optimizer)
                self.handles.append(p.register_post_accumulate_grad_hook(self._hook(group, optimizer)))

    def _hook(self, group: dict, optimizer: torch.optim.Optimizer):
        def step(p: torch.Tensor) -> None:
            if not self.armed or p.grad is None:
                return
            grad = p.grad
            if self.processes is not None and self.processes.distributed:
                import torch.distributed as dist

                dist.all_reduce(grad)
                grad /= self.processes.world
            if self.loss_scale != 1.0:
                grad /= self.loss_scale
            finite = torch.isfinite(grad)
            bad = (~finite).any()
            self._bad = bad if self._bad is None else self._bad | bad
            grad.masked_fill_(~finite, 0.0)
            if self.clip_value is not None:
                grad.clamp_(-self.clip_value, self.clip_value)
            optimizer.param_groups[0]["lr"] = group["lr"]
            optimizer.step()
            p.grad = None
        return step

    def arm(self, armed: bool) -> None:
        """Whether the next backward pass steps (the last micro-batch of an accumulation) or only accumulates."""
        self.armed = armed

    def finish_step(self) -> bool:
        """After the stepping backward pass: whether every gradient was finite (one sync); adjusts the loss scale."""
        bad = bool(self._bad) if self._bad is not None else False
        self._bad = None
        if self.dynamic:
            if bad:
                self.loss_scale /= 2
                self.clean_steps = 0
            else:
                self.clean_steps += 1
                if self.clean_steps % GROWTH_INTERVAL == 0:
                    self.loss_scale *= 2
        return not bad

    def step(self) -> None:
        """Nothing: the parameters stepped in the backward pass."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self) -> dict:
        """torch's layout: ``state`` by parameter index over the groups, and the groups."""
        state = {i: o.state_dict()["state"].get(0, {}) for i, o in enumerate(self.optimizers)}
        groups, i = [], 0
        for group in self.param_groups:
            groups.append({"lr": group["lr"], "params": list(range(i, i + len(group["params"])))})
            i += len(group["params"])
        return {"state": state, "param_groups": groups, "loss_scale": self.loss_scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict) -> None:
        if len(state["state"]) > len(self.optimizers):
            raise ValueError(f"optimizer state for {len(state['state'])} parameters, but {len(self.optimizers)} train")
        for i, optimizer in enumerate(self.optimizers):
            own = optimizer.state_dict()
            saved = state["state"].get(i, state["state"].get(str(i), {}))
            optimizer.load_state_dict({"state": {0: saved} if saved else {}, "param_groups": own["param_groups"]})
        for group, saved in zip(self.param_groups, state["param_groups"]):
            group["lr"] = saved["lr"]
        self.loss_scale = float(state.get("loss_scale", self.loss_scale))
        self.clean_steps = int(state.get("clean_steps", 0))

    def close(self) -> None:
        """Removes the hooks: the parameters train normally (or not at all) afterwards."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
