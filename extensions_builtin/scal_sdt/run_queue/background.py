"""The queue run in a thread of a long-lived process (the WebUI, the standalone page): started from the Queue tab
or the API, stopped after the job it is on."""
from __future__ import annotations

import threading
import time
from typing import Callable, ContextManager

from ..training.report import Reporter
from .runner import QueueBusy, TrainFn, run_queue
from .store import WAITING, QueueFolder, QueuedJob


class BackgroundRunner:
    """One runner thread for ``queue`` at a time. ``train`` trains one job (the host's way: the WebUI's loaded model
    under its GPU lock, the page's model); ``reporter_for(job)`` gives each job its reporter."""

    def __init__(self, queue: QueueFolder, train: TrainFn,
                 reporter_for: Callable[[QueuedJob], Reporter] = lambda job: Reporter()):
        self.queue, self.train, self.reporter_for = queue, train, reporter_for
        self.log: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def say(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.log[:-50]

    def start(self) -> bool:
        """Start running the waiting jobs; False when this process already runs them."""
        if self.running:
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scal-sdt-queue")
        self._thread.start()
        return True

    def stop_after_current(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            ended = run_queue(self.queue, self.train, self.reporter_for, say=self.say, stop=self._stop.is_set)
            self.say(f"ran {len(ended)} job(s); the queue is {'paused' if self.queue.paused else 'empty'}"
                     if not self._stop.is_set() else f"stopped after {len(ended)} job(s) as asked")
        except QueueBusy as e:
            self.say(str(e))
        except Exception as e:  # noqa: BLE001 - the page or the WebUI keeps running; the log says why
            self.say(f"the queue stopped: {type(e).__name__}: {e}")

    def status(self) -> dict:
        return {"folder": str(self.queue.root), "running": self.running, "paused": self.queue.paused,
                "log": self.log[-10:]}


def each_job_holding(lock: ContextManager, train: TrainFn) -> TrainFn:
    """``train`` holding ``lock`` (the WebUI's GPU queue lock) for one job at a time: what waits for the lock (a
    generation, a training started from a tab) goes between two jobs of the queue, never into one."""
    def locked(cfg, explicit: set, reporter: Reporter):
        with lock:
            return train(cfg, explicit, reporter)
    return locked


def start_on_launch(runner: BackgroundRunner, asked: bool) -> bool:
    """The setting "run the queue when the WebUI starts": when ``asked`` and jobs wait (a job cut off by the last
    shutdown among them, continued from its checkpoint), start running them. True when it started."""
    if not asked:
        return False
    waiting = sum(1 for job in runner.queue.jobs() if job.state in WAITING)
    if not waiting:
        runner.say("started with the WebUI: no job waiting")
        return False
    runner.say(f"started with the WebUI: {waiting} job(s) waiting" + (", but the queue is paused" if
                                                                       runner.queue.paused else ""))
    return runner.start()
