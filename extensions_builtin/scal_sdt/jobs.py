"""Long jobs that run in the background (API requests, the standalone page): progress, interrupt, result."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import speak
from .files import atomic_write_text
from .training.report import Reporter


@dataclass
class Job:
    id: str
    kind: str
    status: str = "queued"  # queued | running | finished | interrupted | failed
    step: int = 0
    total: int = 0
    loss: float | None = None
    messages: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    request: dict = field(default_factory=dict)

    def to_dict(self, face: str | None = None) -> dict:
        """With ``face`` ("api", ...) the messages and the error name options in that face's words."""
        out = asdict(self)
        if face is not None:
            out["messages"] = [speak(m, face) for m in self.messages]
            out["error"] = None if self.error is None else speak(self.error, face)
        return out


class JobReporter(Reporter):
    """Keeps a Job up to date; ``stop`` asks the loop to end after the current step."""

    def __init__(self, job: Job):
        self.job = job
        self.losses: list[float] = []
        self.stop_requested = threading.Event()

    def begin(self, job, total, start=0):
        self.job.total, self.job.step = total, start

    def step(self, info):
        self.job.step, self.job.loss = info["step"], info.get("loss")
        if "loss" in info:
            self.losses.append(info["loss"])

    def message(self, text):
        self.job.messages.append(text)

    def preview(self, step, images, paths):
        self.job.previews.extend(str(p) for p in paths)

    def should_stop(self):
        return self.stop_requested.is_set()


class FanOut(Reporter):
    """Send every report to several reporters; stop when any of them asks to."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def begin(self, job, total, start=0):
        for r in self.reporters:
            r.begin(job, total, start)

    def step(self, info):
        for r in self.reporters:
            r.step(info)

    def message(self, text):
        for r in self.reporters:
            r.message(text)

    def preview(self, step, images, paths):
        for r in self.reporters:
            r.preview(step, images, paths)

    def should_stop(self):
        return any(r.should_stop() for r in self.reporters)

    def end(self):
        for r in self.reporters:
            r.end()


#: what a job that was running or waiting when its process ended becomes when the registry is read again
RESTARTED = ("the server restarted while this job was {status}; start it again with the same options and "
             "resume: true to continue from its last checkpoint")


class JobRegistry:
    """Runs one function per job in a thread (under ``lock`` when given: the host's GPU queue).

    With ``store`` (a JSON file) every job's state is written there at each change of status, atomically, and read
    back when a registry is made on the same file: a job that was queued or running when the process ended (a
    restart of the WebUI) is reported as interrupted, with its request kept so it can be resumed, never forgotten."""

    def __init__(self, lock: Any = None, store: str | os.PathLike | None = None):
        self.lock = lock
        self.jobs: dict[str, Job] = {}
        self.reporters: dict[str, JobReporter] = {}
        self.store = Path(store) if store else None
        self._writing = threading.Lock()
        if self.store is not None:
            self._read_store()

    def _read_store(self) -> None:
        try:
            saved = json.loads(self.store.read_text())["jobs"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:  # a torn file loses no server start
            print(f"[SCAL-SDT] could not read the job list {self.store} ({e}); starting a new one")
            return
        known = {f.name for f in dataclasses.fields(Job)}
        for entry in saved:
            try:
                job = Job(**{k: v for k, v in entry.items() if k in known})
            except TypeError:
                continue
            if job.status in ("queued", "running"):
                job.messages.append(RESTARTED.format(status=job.status))
                job.status, job.finished = "interrupted", job.finished or time.time()
            self.jobs[job.id] = job
        self._write_store()

    def _write_store(self) -> None:
        if self.store is None:
            return
        with self._writing:
            data = json.dumps({"jobs": [j.to_dict() for j in self.jobs.values()]}, default=str)
            try:
                atomic_write_text(self.store, data)
            except OSError as e:  # the job itself goes on
                print(f"[SCAL-SDT] could not write the job list {self.store}: {e}")

    def start(self, kind: str, fn: Callable[[Reporter], dict], locked: bool = True, request: dict | None = None) -> Job:
        """``locked=False`` for work that does not use the host's model (tagging with ONNX models); ``request``:
        the options the job was started with, kept with it (to start it again after a restart)."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, request=dict(request or {}))
        reporter = JobReporter(job)
        self.jobs[job.id], self.reporters[job.id] = job, reporter
        self._write_store()
        threading.Thread(target=self._run, args=(job, reporter, fn, locked), daemon=True,
                         name=f"scal-sdt-{kind}").start()
        return job

    def _run(self, job: Job, reporter: JobReporter, fn: Callable[[Reporter], dict], locked: bool = True) -> None:
        lock = self.lock if self.lock is not None and locked else _NoLock()
        with lock:
            job.status, job.started = "running", time.time()
            self._write_store()
            try:
                job.result = fn(reporter) or {}
                job.status = "interrupted" if job.result.get("interrupted") else "finished"
            except Exception as e:  # the job fails, the server keeps running
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
                job.messages.append(traceback.format_exc(limit=-4))
            finally:
                job.finished = time.time()
                self._write_store()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def interrupt(self, job_id: str) -> bool:
        reporter = self.reporters.get(job_id)
        if reporter is None:
            return False
        reporter.stop_requested.set()
        return True


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
