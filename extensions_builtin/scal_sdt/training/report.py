"""The loop reports; the host displays. A console reporter for the command line lives here."""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from ..config import speak


class Reporter:
    """Receives progress from a long job. The WebUI's adapter maps it onto ``shared.state``."""

    def begin(self, job: str, total: int, start: int = 0) -> None: ...

    def step(self, info: dict) -> None:
        """``info`` has at least ``step`` and ``loss``; also ``lr``."""

    def message(self, text: str) -> None: ...

    def preview(self, step: int, images: list[Image.Image], paths: list[Path]) -> None: ...

    def should_stop(self) -> bool:
        return False

    def end(self) -> None: ...


class ConsoleReporter(Reporter):
    """A tqdm progress bar with the loss; messages go above the bar."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None

    def begin(self, job, total, start=0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, desc=job, disable=self.quiet, dynamic_ncols=True, file=sys.stderr)

    def step(self, info):
        if self.bar is not None:
            self.bar.update(info["step"] - self.bar.n)
            if "loss" in info:
                self.bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info.get('lr', 0):.2e}")
            else:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in info.items() if k != "step"})

    def message(self, text):
        if self.quiet:
            return
        text = speak(text, "cli")
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def preview(self, step, images, paths):
        self.message(f"step {step}: preview {', '.join(str(p) for p in paths)}")

    def end(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
