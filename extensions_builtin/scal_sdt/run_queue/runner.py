"""Running a queue folder: its jobs one after another on the one device, each continued from its last checkpoint
when a crash cut it off. One runner per folder at a time (a lock the system drops with the process, even on
kill -9); several machines each run their own folder."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from ..config import from_dict
from ..training.checkpoints import CheckpointStore
from ..training.report import Reporter
from ..training.run_setup import run_dir_for
from .store import WAITING, QueueFolder, QueuedJob

LOCK_FILE = ".runner.lock"

#: how a job is trained: (config, the options the job gave, reporter) -> the loop's result. The command line loads
#: the model for each job (runs.prepare + runs.train); the WebUI trains on its loaded model under its queue lock
TrainFn = Callable[[object, set, Reporter], object]


class QueueBusy(RuntimeError):
    pass


@contextlib.contextmanager
def runner_lock(queue: QueueFolder) -> Iterator[None]:
    """Held while this process runs the queue; a second runner is refused with a clear message."""
    queue.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(queue.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QueueBusy(f"another process is running the queue in {queue.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


#: what a job's file may say while it runs that stops it after its step
STOPPING = ("cancelled", "paused")


class JobReporter(Reporter):
    """Passes everything on; stops the run when its job file says cancelled or paused (read at most once a second),
    and keeps the job's step in memory for the final write."""

    def __init__(self, inner: Reporter, queue: QueueFolder, job: QueuedJob):
        self.inner, self.queue, self.job = inner, queue, job
        self.step_reached = job.step
        self._checked = 0.0
        self.stopped_as = ""  # "cancelled" / "paused": what the job file said when the run was stopped

    def begin(self, job, total, start=0):
        self.inner.begin(job, total, start)

    def step(self, info):
        self.step_reached = info["step"]
        self.inner.step(info)

    def message(self, text):
        self.inner.message(text)

    def preview(self, step, images, paths):
        self.inner.preview(step, images, paths)

    def should_stop(self):
        now = time.monotonic()
        if not self.stopped_as and now - self._checked >= 1.0:
            self._checked = now
            try:
                state = self.queue.get(self.job.id).state
                self.stopped_as = state if state in STOPPING else ""
            except ValueError:  # its file was removed: stop too
                self.stopped_as = "cancelled"
        return bool(self.stopped_as) or self.inner.should_stop()

    def end(self):
        self.inner.end()


def config_of(job: QueuedJob):
    """The job's config; a job cut off with a checkpoint in its run folder continues from it (resume)."""
    from ..runs import config_for_command

    cfg = from_dict(config_for_command(job.command), job.options)
    if job.attempts > 0 and CheckpointStore(run_dir_for(cfg)).complete():
        cfg = dataclasses.replace(cfg, resume=True)
    return cfg


def next_job(queue: QueueFolder) -> QueuedJob | None:
    return next((j for j in queue.jobs() if j.state in WAITING), None)


def run_queue(queue: QueueFolder, train: TrainFn, reporter_for: Callable[[QueuedJob], Reporter],
              say: Callable[[str], None] = print, watch: float = 0.0, stop: Callable[[], bool] = lambda: False) -> list:
    """Run the waiting jobs in order until none is left (``watch`` > 0: keep looking every ``watch`` seconds for
    new ones), the queue is paused, or ``stop()``. Returns the jobs it ended, as they ended."""
    ended = []
    with runner_lock(queue):
        while not stop():
            if queue.paused:
                say(f"the queue in {queue.root} is paused (scal-sdt queue resume to go on)")
                break
            job = next_job(queue)
            if job is None:
                if watch > 0:
                    time.sleep(watch)
                    continue
                break
            ended.append(run_job(queue, job, train, reporter_for(job), say))
            if ended[-1].state == "queued":  # stopped by hand (Ctrl+C, the stop button): the queue stops too
                break
    return ended


def run_job(queue: QueueFolder, job: QueuedJob, train: TrainFn, reporter: Reporter, say) -> QueuedJob:
    cut_off = job.state == "running"
    try:
        cfg = config_of(job)
    except (ValueError, TypeError) as e:
        return queue.update(job.id, state="failed", finished=time.time(), message=f"bad options: {e}")
    job = queue.update(job.id, state="running", attempts=job.attempts + 1, started=job.started or time.time(),
                       message="")
    what = f"job {job.id} ({job.command} {job.name})"
    say(f"{what}: " + ("continuing from its last checkpoint" if cfg.resume else
                       "starting again (it was cut off before its first checkpoint)" if cut_off else "starting"))
    watcher = JobReporter(reporter, queue, job)
    try:
        result = train(cfg, set(job.options), watcher)
    except Exception as e:  # noqa: BLE001 - the job fails, the queue goes on
        say(f"{what} failed: {type(e).__name__}: {e}")
        return _finish(queue, job, "failed", watcher.step_reached, f"{type(e).__name__}: {e}")
    if getattr(result, "interrupted", False):
        state = watcher.stopped_as or "queued"  # stopped by hand (Ctrl+C, stop): it waits again
        say(f"{what} stopped at step {result.step}" + {
            "cancelled": "", "paused": "; paused: it continues from there once resumed"}.get(
            state, "; it continues next run"))
        return _finish(queue, job, state, result.step, {
            "cancelled": "cancelled", "paused": f"paused at step {result.step}"}.get(
            state, f"stopped at step {result.step}"))
    say(f"{what} done at step {result.step}: {result.final_path}")
    return _finish(queue, job, "done", result.step, str(result.final_path))


def _finish(queue: QueueFolder, job: QueuedJob, state: str, step: int, message: str) -> QueuedJob:
    try:
        current = queue.get(job.id)
    except ValueError:  # removed meanwhile
        return dataclasses.replace(job, state=state, step=step, message=message)
    if current.state == "cancelled":
        state, message = "cancelled", current.message or message
    elif current.state == "paused" and state != "done":  # paused as it failed or stopped: it waits, paused
        state, message = "paused", f"paused at step {step}"
    return queue.update(job.id, state=state, step=step, finished=time.time(), message=message)


def train_here(cfg, explicit: set, reporter: Reporter):
    """The command line's way: the job's model loaded for it, as ``scal-sdt COMMAND`` does."""
    from .. import runs

    run = runs.prepare(cfg, explicit=explicit, say=reporter.message)
    return runs.train(run, reporter)


def queue_dir(path: str | os.PathLike) -> QueueFolder:
    return QueueFolder(Path(path))
