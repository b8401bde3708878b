"""The loss log of a run: a CSV file and a plot, both rewritten atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_path, atomic_write_text

COLUMNS = ("step", "loss", "lr", "seconds")


class RunLog:
    def __init__(self, run_dir: Path, resume_from: int | None = None):
        self.csv_path = run_dir / "loss.csv"
        self.plot_path = run_dir / "loss.png"
        self.rows: list[dict] = []
        if resume_from is not None and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                self.rows = [dict(step=int(r["step"]), loss=float(r["loss"]), lr=float(r["lr"]), seconds=float(r["seconds"]))
                             for r in csv.DictReader(f) if int(r["step"]) <= resume_from]

    def append(self, step: int, loss: float, lr: float, seconds: float) -> None:
        self.rows.append(dict(step=step, loss=loss, lr=lr, seconds=seconds))

    def write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.rows:
            self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        steps = [r["step"] for r in self.rows]
        losses = [r["loss"] for r in self.rows]
        smooth, avg = [], 0.0
        for i, value in enumerate(losses, start=1):
            avg = 0.95 * avg + 0.05 * value
            smooth.append(avg / (1 - 0.95 ** i))  # bias-corrected moving average
        fig = Figure(figsize=(7, 3.5), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(steps, losses, color="#9ab", linewidth=0.8, label="loss")
        ax.plot(steps, smooth, color="#c33", linewidth=1.6, label="smoothed")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            fig.savefig(tmp, format="png")
