"""A learning-rate range test: train briefly while the rate rises exponentially, watch a fixed probe loss, and
propose a rate well below where it stops improving. For hypernetworks, whose good rate depends on the model's
widths and the structure and whose too-high rate silently turns pictures to noise.

The probe is the diffusion loss of a few training latents at fixed timesteps and noises (``heldout_loss``), so the
curve is not drowned in the noise of random timesteps. The parameters are restored afterwards: nothing is trained.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_path, atomic_write_text


@dataclass
class RangeTest:
    lrs: list[float]
    probe: list[float]  # probe loss after the step at each rate
    start: float  # probe loss before any step
    proposal: float

    def write(self, run_dir: Path) -> tuple[Path, Path]:
        """``find_lr.csv`` and ``find_lr.png`` in ``run_dir``."""
        run_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        buf.write("lr,probe_loss\n")
        buf.writelines(f"{lr:.6g},{loss:.6g}\n" for lr, loss in zip(self.lrs, self.probe))
        csv_path = run_dir / "find_lr.csv"
        atomic_write_text(csv_path, buf.getvalue())
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 3.5), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ax.semilogx(self.lrs, self.probe, color="#c33", linewidth=1.4, label="probe loss")
        ax.axhline(self.start, color="#999", linewidth=0.8, label="before")
        ax.axvline(self.proposal, color="#284", linewidth=1.2, label=f"proposal {self.proposal:.2g}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png_path = run_dir / "find_lr.png"
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png")
        return csv_path, png_path


def lr_range_test(params: list[torch.Tensor], train_loss, probe_loss, steps: int = 60, lr_min: float = 1e-8,
                  lr_max: float = 1e-1, diverge: float = 1.5) -> RangeTest:
    """``train_loss()`` gives a training loss with a graph to ``params``; ``probe_loss()`` a float. Stops early once
    the probe exceeds ``diverge`` x its starting value. Proposes a tenth of the rate with the lowest probe loss
    (never more than the last rate that still improved on the start)."""
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr_min, weight_decay=0.0)
    start = probe_loss()
    lrs, probe = [], []
    try:
        for i in range(steps):
            lr = lr_min * (lr_max / lr_min) ** (i / max(steps - 1, 1))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = train_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = probe_loss()
            lrs.append(lr)
            probe.append(value)
            if not math.isfinite(value) or value > diverge * start:
                break
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
    best = min(range(len(probe)), key=lambda i: probe[i] if math.isfinite(probe[i]) else math.inf)
    if probe[best] >= start:  # nothing helped: the lowest rate tried
        return RangeTest(lrs, probe, start, lrs[0])
    improving = [lr for lr, v in zip(lrs, probe) if v < start]
    return RangeTest(lrs, probe, start, min(lrs[best] / 10, max(improving)))
