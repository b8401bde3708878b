"""The queue as people read it: a line per job on the command line, a table on the page."""
from __future__ import annotations

import html
import time

from .store import QueueFolder, QueuedJob


def _when(t: float) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(t)) if t else ""


def _steps(job: QueuedJob) -> str:
    return f"{job.step}/{job.options.get('steps', '?')}" if job.step or job.state != "queued" else ""


def job_lines(queue: QueueFolder) -> list[str]:
    """``id  state  command  name  step/steps  message``, in the order the queue runs them."""
    return [f"{j.id}  {j.state:<9}  {j.command:<18}  {j.name:<16}  {_steps(j):>9}  {j.message}".rstrip()
            for j in queue.jobs()]


def job_table(queue: QueueFolder) -> str:
    jobs = queue.jobs()
    if not jobs:
        return f"<p>No jobs in {html.escape(str(queue.root))}.</p>"
    rows = "".join(
        f"<tr data-state='{j.state}'><td>{i}</td><td>{html.escape(j.id)}</td><td>{j.state}</td>"
        f"<td>{html.escape(j.command)}</td><td>{html.escape(j.name)}</td><td>{_steps(j)}</td><td>{_when(j.added)}</td>"
        f"<td>{html.escape(j.message)}</td></tr>" for i, j in enumerate(jobs, start=1))
    paused = "<p><b>Paused</b>: a running job finishes, no next one starts.</p>" if queue.paused else ""
    return (paused + "<table class='scal-sdt-jobs scal-sdt-queue'><tr><th>#</th><th>job</th><th>state</th>"
            f"<th>trainer</th><th>name</th><th>step</th><th>added</th><th>result</th></tr>{rows}</table>")
