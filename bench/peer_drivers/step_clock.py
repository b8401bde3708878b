"""Times every optimiser step of whatever trainer runs in this process, without touching the trainer: a global torch
hook after each ``Optimizer.step`` appends ``time.perf_counter()`` and ``time.process_time()`` (the process's CPU
seconds, which other programs on a shared CPU disturb far less than the wall clock) to a file, one line a step.
Used the same way on both sides of ``bench/kohya.py`` (sd-scripts' trainers through ``kohya_sd1_sizes.py``, ours
through ``install`` before the command line runs)."""
from __future__ import annotations

import os
import time


def install(path: str) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    clock = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the process's life

    def stamp(optimizer, args, kwargs) -> None:
        clock.write(f"{time.perf_counter()} {time.process_time()}\n")

    register_optimizer_step_post_hook(stamp)


def install_from_env() -> None:
    """``install`` to the file named by $STEP_CLOCK, when it is set."""
    if os.environ.get("STEP_CLOCK"):
        install(os.environ["STEP_CLOCK"])
