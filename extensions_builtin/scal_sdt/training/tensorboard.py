"""TensorBoard event files beside loss.csv (``pip install "scal-sdt[tensorboard]"``): loss, learning rate, validation
loss and previews, for ``tensorboard --logdir scal-sdt-runs``. Without the package the run goes on without them."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - needs the tensorboard package
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Writes to ``run_dir``; a resumed run (``resume_from`` its step) drops what a cut-off run wrote past it."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_from: int | None = None, report=print):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        try:
            # events past the checkpoint (a cut-off run's tail) are dropped; the resumed run logs from the next step
            self.writer = SummaryWriter(log_dir=str(run_dir),
                                        purge_step=None if resume_from is None else resume_from + 1)
        except OSError as e:  # the run goes on without it
            report(f"TensorBoard events are not written: {e}")

    def scalars(self, step: int, **values: float | None) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(name, value, step)

    def previews(self, step: int, images) -> None:
        if self.writer is None or not images:
            return
        for i, image in enumerate(images[:8]):
            self.writer.add_image(f"preview/{i}", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
