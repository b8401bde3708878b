"""The loss log of a run: a CSV file and a plot (training loss, smoothed, and validation loss), written atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_path, atomic_write_text

COLUMNS = ("step", "loss", "lr", "seconds", "val_loss")


def _float(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


class RunLog:
    """``report`` hears about rows of an existing log that cannot be read (a torn tail from a power cut during a
    write): they are skipped and the run goes on."""

    def __init__(self, run_dir: Path, resume_from: int | None = None, report=print):
        self.csv_path = run_dir / "loss.csv"
        self.plot_path = run_dir / "loss.png"
        self.rows: list[dict] = []
        if resume_from is not None and self.csv_path.exists():
            self.rows = self._read(resume_from, report)

    def _read(self, resume_from: int, report) -> list[dict]:
        rows, bad = [], 0
        try:
            text = self.csv_path.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            report(f"could not read {self.csv_path} ({e}); the loss log starts again from here")
            return rows
        if text and not text.endswith("\n"):  # the last row was cut short: whatever it holds is not trusted
            text, bad = text[:text.rfind("\n") + 1], 1
        for r in csv.DictReader(io.StringIO(text)):
            try:
                row = dict(step=int(r["step"]), loss=float(r["loss"]), lr=float(r["lr"]),
                           seconds=float(r["seconds"]), val_loss=_float(r.get("val_loss") or ""))
            except (TypeError, ValueError, KeyError):
                bad += 1
                continue
            if row["step"] <= resume_from:
                rows.append(row)
        if bad:
            report(f"skipped {bad} unreadable row(s) of {self.csv_path} (a torn write); the log goes on from step "
                   f"{rows[-1]['step'] if rows else 0}")
        return rows

    def append(self, step: int, loss: float, lr: float, seconds: float) -> None:
        self.rows.append(dict(step=step, loss=loss, lr=lr, seconds=seconds, val_loss=None))

    def set_validation(self, step: int, value: float) -> None:
        for row in reversed(self.rows):
            if row["step"] == step:
                row["val_loss"] = value
                return

    def write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**r, "val_loss": "" if r["val_loss"] is None else r["val_loss"]} for r in self.rows)
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
        val = [(r["step"], r["val_loss"]) for r in self.rows if r["val_loss"] is not None]
        if val:
            ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="#284", linewidth=1.4, markersize=3,
                    label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            fig.savefig(tmp, format="png")
