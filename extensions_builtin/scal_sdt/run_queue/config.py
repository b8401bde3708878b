"""The options of ``scal-sdt queue``."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, option

ACTIONS = ("add", "list", "run", "cancel", "move", "remove", "pause", "resume")
DEFAULT_FOLDER = "scal-sdt-queue"


@dataclass(kw_only=True)
class QueueConfig:
    action: str = option(help="add FILE (a config file with its command, e.g. from --save-config) | list | run | "
                              "cancel JOB | move JOB --to N | remove JOB | pause [JOB] | resume [JOB] (without JOB: "
                              "the whole queue)", choices=ACTIONS, positional=True)
    job: str = option("", "add: the job's config file (.toml or .json, with command = \"train-embedding\" or "
                          "another trainer); cancel, move, remove, pause, resume: the job's id (or its start)",
                      positional=True)
    queue: str = option(DEFAULT_FOLDER, "the queue folder (one per machine)", folder=True)
    to: int = option(1, "move: the job's new place among those still to run (1 = next)", min=1)
    watch: float = option(0.0, "run: when the queue is empty, look for new jobs every N seconds instead of "
                               "stopping (0 = stop)", min=0.0)

    def __post_init__(self):
        check_bounds(self)
        if self.action in ("add", "cancel", "move", "remove") and not self.job:
            what = "a config file" if self.action == "add" else "the job's id (scal-sdt queue list)"
            raise ValueError(f"queue {self.action} needs {what}")
