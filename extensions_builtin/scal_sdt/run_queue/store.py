"""The queue folder: one TOML file per job (its place, state and the run's options), written atomically.

    scal-sdt-queue/
      job-20261207-201500-3f2a.toml   [job] id, command, position, state, ... + [options] the config
      paused                          present while the queue is paused

A job is ``queued``, ``running``, ``paused``, ``done``, ``failed`` or ``cancelled``. A job found ``running`` when no
runner holds the folder was cut off (a crash, a kill, a restart): the next run continues it from its last checkpoint.
A paused job is passed over (the next one runs) until it is resumed; paused while running, it stops after its step
and continues from its last checkpoint once resumed.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the WebUI's Python 3.10
    import tomli as tomllib

from ..config import from_dict
from ..files import atomic_write_text

STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
WAITING = ("queued", "running")  # what a runner takes: running = cut off before it ended
TO_RUN = WAITING + ("paused",)  # still to run some day: what can be moved, paused or cancelled
PAUSED_FILE = "paused"
PREFIX = "job-"


@dataclass
class QueuedJob:
    id: str
    command: str  # the training sub-command: train-embedding, train-hypernetwork, dreambooth, train-lora
    options: dict  # the config's options, as in a config file
    position: float = 0.0  # the queue runs jobs by position, smallest first
    state: str = "queued"
    added: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    attempts: int = 0  # how many times a runner started it (more than 1: it was continued after a cut)
    step: int = 0  # the step it reached (when it ended, or when its runner last said)
    message: str = ""  # the result's path, or why it failed
    path: Path | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return str(self.options.get("name", ""))

    def to_toml(self) -> str:
        import tomli_w

        job = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("options", "path")}
        return f"# scal-sdt queue job ({self.command})\n" + tomli_w.dumps({"job": job, "options": self.options})


class QueueFolder:
    """The jobs of one queue folder. Each change is one file written to a temporary name and renamed, so a crash
    never leaves a torn job, and two processes (the runner, a ``queue cancel``) never half-write one."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- reading --------------------------------------------------------------------------------------------------
    def jobs(self) -> list[QueuedJob]:
        """Every job, in the order the queue runs them (position, then the time it was added)."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.glob(f"{PREFIX}*.toml"):
            job = self._read(path)
            if job is not None:
                out.append(job)
        return sorted(out, key=lambda j: (j.position, j.added, j.id))

    def _read(self, path: Path) -> QueuedJob | None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(QueuedJob)} - {"options", "path"}
            job = QueuedJob(**{k: v for k, v in data["job"].items() if k in known}, options=dict(data["options"]),
                            path=path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"[SCAL-SDT] skipped queue file {path}: {e}", file=sys.stderr)
            return None
        return job

    def get(self, job_id: str) -> QueuedJob:
        """The job ``job_id`` (or the only one whose id starts with it)."""
        jobs = self.jobs()
        exact = [j for j in jobs if j.id == job_id]
        found = exact or [j for j in jobs if j.id.startswith(job_id)] if job_id else []
        if len(found) != 1:
            known = ", ".join(j.id for j in jobs) or "none"
            raise ValueError(f"{'several jobs match' if found else 'no job'} {job_id!r} in {self.root} (jobs: {known})")
        return found[0]

    # -- writing --------------------------------------------------------------------------------------------------
    def save(self, job: QueuedJob) -> QueuedJob:
        job.path = self.root / f"{PREFIX}{job.id}.toml"
        atomic_write_text(job.path, job.to_toml())
        return job

    def add(self, command: str, options: dict) -> QueuedJob:
        """Queue a run of ``command`` with ``options`` (those the user set, as in a config file: presets fill in
        the rest when it runs) at the end. The options are checked now, not at night."""
        from .. import runs

        options = {k: v for k, v in options.items() if v is not None and k != "command"}
        cfg = from_dict(runs.config_for_command(command), options)
        options = {k: getattr(cfg, k) for k in options}  # as their fields' types
        jobs = self.jobs()
        now = time.time()
        job = QueuedJob(id=time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2),
                        command=command, options=options, added=now,
                        position=max((j.position for j in jobs), default=0.0) + 1)
        return self.save(job)

    def add_config(self, cfg, given=None) -> QueuedJob:
        """Queue ``cfg`` (a training config from a form): the options in ``given`` (default: those that differ from
        their defaults, as a form counts them) and its name."""
        from .. import runs
        from ..config import changed_options

        names = (changed_options(cfg) if given is None else set(given)) | {"name"}
        return self.add(runs.trainer_for(cfg).command, {k: getattr(cfg, k) for k in sorted(names)})

    def add_file(self, path) -> QueuedJob:
        """Queue the config file ``path`` (.toml / .json with its ``command``, as --save-config writes); a bad key or
        value is named with the file and line."""
        from .. import runs
        from ..config_files import COMMAND_KEY, locate, options_for, read_file

        source = read_file(path)
        command = source.values.get(COMMAND_KEY)
        if not command:
            raise ValueError(f"{source.path}: name the trainer with command = \"train-embedding\" (or "
                             f"train-hypernetwork, dreambooth, train-lora)")
        try:
            kind = runs.config_for_command(command)
        except ValueError as e:
            raise source.error(COMMAND_KEY, str(e)) from None
        options = options_for(kind, source, command)
        try:
            return self.add(command, options)
        except ValueError as e:
            raise locate(e, source, set(options)) from None

    def update(self, job_id: str, **changes) -> QueuedJob:
        job = self.get(job_id)
        return self.save(dataclasses.replace(job, **changes))

    def cancel(self, job_id: str) -> QueuedJob:
        """A waiting job is not run; a running one stops after its current step (its runner reads the state)."""
        job = self.get(job_id)
        if job.state not in TO_RUN:
            raise ValueError(f"job {job.id} is {job.state}: only a queued, paused or running job can be cancelled")
        return self.update(job.id, state="cancelled", message="cancelled" + (" while running" if
                                                                             job.state == "running" else ""))

    def move(self, job_id: str, to: int) -> QueuedJob:
        """Put the job at place ``to`` (1 = first) among the jobs still to run."""
        job = self.get(job_id)
        waiting = [j for j in self.jobs() if j.state in TO_RUN and j.id != job.id]
        if job.state not in TO_RUN:
            raise ValueError(f"job {job.id} is {job.state}: only a job still to run can be moved")
        if to < 1:
            raise ValueError(f"to must be ≥ 1 (the first place), not {to}")
        order = waiting[:to - 1] + [job] + waiting[to - 1:]
        for i, j in enumerate(order, start=1):
            if j.position != i:
                self.update(j.id, position=float(i))
        return self.get(job.id)

    def remove(self, job_id: str) -> None:
        job = self.get(job_id)
        if job.state == "running":
            raise ValueError(f"job {job.id} is running: cancel it first")
        job.path.unlink()

    def pause_job(self, job_id: str) -> QueuedJob:
        """The job is passed over (the queue goes on with the next one) until :meth:`resume_job`; a running one
        stops after its current step (its runner reads the state) and later continues from its last checkpoint."""
        job = self.get(job_id)
        if job.state not in WAITING:
            raise ValueError(f"job {job.id} is {job.state}: only a queued or running job can be paused")
        return self.update(job.id, state="paused", message="paused" + (" while running" if job.state == "running"
                                                                       else ""))

    def resume_job(self, job_id: str) -> QueuedJob:
        """A paused job waits again in its place."""
        job = self.get(job_id)
        if job.state != "paused":
            raise ValueError(f"job {job.id} is {job.state}: only a paused job can be resumed")
        return self.update(job.id, state="queued", message="")

    # -- pause ----------------------------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return (self.root / PAUSED_FILE).exists()

    def pause(self) -> None:
        """The runner finishes the job it is on and takes no next one until :meth:`resume`."""
        atomic_write_text(self.root / PAUSED_FILE, time.strftime("%Y-%m-%d %H:%M:%S\n"))

    def resume(self) -> None:
        (self.root / PAUSED_FILE).unlink(missing_ok=True)
