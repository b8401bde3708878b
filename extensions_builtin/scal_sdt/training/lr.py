"""Learning-rate schedules as pure functions of the step (nothing to resume but the step itself)."""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("piecewise", "cosine", "cosine_restarts", "exponential", "constant")


@dataclass(frozen=True)
class PiecewiseLR:
    """The WebUI's syntax: ``"0.005:100, 1e-3:1000, 1e-5"`` — 0.005 until step 100, 1e-3 until 1000, then 1e-5."""

    pieces: tuple[tuple[float, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> "PiecewiseLR":
        pieces = []
        items = [p.strip() for p in str(text).split(",") if p.strip()]
        if not items:
            raise ValueError("lr is empty; write e.g. '0.005' or '0.005:100, 1e-3:1000, 1e-5'")
        for i, item in enumerate(items):
            rate, _, until = item.partition(":")
            try:
                value = float(rate)
                end = int(until) if until.strip() else None
            except ValueError:
                raise ValueError(f"cannot read learning rate piece {item!r} in {text!r}; "
                                 f"write RATE or RATE:UNTIL_STEP, e.g. '0.005:100, 1e-3:1000, 1e-5'") from None
            if value < 0:
                raise ValueError(f"learning rate must be ≥ 0 in {text!r}")
            if end is None and i != len(items) - 1:
                raise ValueError(f"only the last piece of {text!r} may leave out ':STEP'")
            if pieces and end is not None and pieces[-1][1] is not None and end <= pieces[-1][1]:
                raise ValueError(f"steps in {text!r} must increase")
            pieces.append((value, end))
        return cls(tuple(pieces))

    @property
    def peak(self) -> float:
        return max(v for v, _ in self.pieces)

    def __call__(self, step: int) -> float:
        for value, end in self.pieces:
            if end is None or step < end:
                return value
        return self.pieces[-1][0]  # past the last ':STEP': keep the last rate


def lr_at(step: int, schedule: str, lr: str, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0,
          cycles: int = 1, final_ratio: float = 0.01) -> float:
    """The learning rate for ``step`` (0-based), after ``warmup_steps`` of linear warm-up.

    ``piecewise``: the WebUI's syntax as written. ``cosine``: from the first rate of ``lr`` down to ``min_ratio`` of
    it. ``cosine_restarts``: the same in ``cycles`` equal cycles, each restarting at the first rate (SGDR).
    ``exponential``: from the first rate down to ``final_ratio`` of it at the last step, by a constant factor per step.
    ``constant``: the first rate."""
    pieces = PiecewiseLR.parse(lr)
    if schedule == "piecewise":
        base = pieces(step)
    elif schedule == "constant":
        base = pieces.pieces[0][0]
    elif schedule in ("cosine", "cosine_restarts", "exponential"):
        peak = pieces.pieces[0][0]
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        if schedule == "exponential":
            base = peak * final_ratio ** progress
        else:
            if schedule == "cosine_restarts" and progress < 1.0:
                progress = (progress * max(1, cycles)) % 1.0  # the position within the current cycle
            base = peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    else:
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if warmup_steps and step < warmup_steps:
        base *= (step + 1) / warmup_steps
    return base


def rate_scale(rate: float, lr: str, steps: int) -> float:
    """The ``lr_scale`` that gives a parameter group ``rate`` at the start of lr's schedule (it then follows the
    schedule); 1 when ``rate`` is 0 (use lr itself)."""
    first = lr_at(0, "constant", lr, steps, 0)
    return rate / first if rate and first else 1.0
