"""The NaN guard: a step whose loss, gradients or weights are not finite is undone (the weights and optimizer state
of the last good step put back), the learning rate is halved, and after ``max_bad_steps`` in a row the run stops
with what to change. The loop asks it after each step; it keeps the rollback copy and the counts."""
from __future__ import annotations

import torch

#: weights above which no rollback copy is kept (it would cost as much device memory as the model and its optimizer
#: state): a bad step is then skipped before it is applied, and weights gone non-finite end the run
SNAPSHOT_LIMIT = 50_000_000


class TrainingDiverged(RuntimeError):
    pass


def finite_gradients(params) -> bool:
    """One device sync for all gradients (their total norm is finite iff every gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norm = (torch.nn.utils.get_total_norm(grads) if hasattr(torch.nn.utils, "get_total_norm")
            else torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
    return bool(torch.isfinite(norm))


def snapshot(params, optimizer) -> tuple[list[torch.Tensor], dict]:
    """A copy of the weights and the optimizer state."""
    opt = optimizer.state_dict()
    opt_copy = {"state": {k: {n: (v.detach().clone() if torch.is_tensor(v) else v) for n, v in s.items()}
                          for k, s in opt["state"].items()}, "param_groups": [dict(g) for g in opt["param_groups"]]}
    return [p.detach().clone() for p in params], opt_copy


def restore(params, optimizer, copy) -> None:
    values, opt = copy
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    optimizer.load_state_dict(opt)


class NanGuard:
    """Rollback, learning-rate halving and the give-up count of one run. ``lr_scale`` multiplies the scheduled rate
    (saved in checkpoints: a resumed run keeps the halvings)."""

    def __init__(self, params, optimizer, max_bad_steps: int, lr_scale: float = 1.0):
        self.params, self.optimizer, self.max_bad_steps = list(params), optimizer, max_bad_steps
        self.lr_scale = lr_scale
        self.bad_in_row = self.bad_total = 0
        self.keeps_copy = sum(p.numel() for p in self.params) <= SNAPSHOT_LIMIT
        self.good = snapshot(self.params, optimizer) if self.keeps_copy else None

    def weights_finite(self) -> bool:
        """After an applied step: whether the weights are finite (large models, with no copy to go back to, show it
        in the next loss instead)."""
        return not self.keeps_copy or all(bool(torch.isfinite(p.detach()).all()) for p in self.params)

    def accept(self) -> None:
        """The step was good: it becomes the state to go back to."""
        self.bad_in_row = 0
        if self.keeps_copy:
            self.good = snapshot(self.params, self.optimizer)

    def reject(self, step: int) -> str:
        """The step was not finite: undo it, halve the rate, count it. Returns what to tell the user."""
        self.bad_in_row += 1
        self.bad_total += 1
        if self.good is not None:
            restore(self.params, self.optimizer, self.good)
        self.lr_scale *= 0.5
        what = "rolled back to the last good state" if self.good is not None else "skipped it"
        return (f"step {step}: loss or gradients not finite; {what} and halved the learning rate "
                f"(x{self.lr_scale:g}) [{self.bad_in_row}/{self.max_bad_steps}]")

    @property
    def gave_up(self) -> bool:
        return self.bad_in_row >= self.max_bad_steps
