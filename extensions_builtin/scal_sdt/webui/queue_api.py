"""``/scal-sdt/v1/queue``: the training queue over HTTP. Plain FastAPI (nothing of the WebUI's), so the routes are
tested without it; service.py mounts them with the WebUI's folder, its way of training and its --api-auth.

    GET    queue                  {"folder", "running", "paused", "log", "jobs": [...]}
    POST   queue                  {"command": "train-embedding", "options": {...}} -> the job (422: bad options)
    POST   queue/run              start running the waiting jobs (409 when already running)
    POST   queue/stop             stop after the job it is on
    POST   queue/pause, resume    the whole queue
    GET    queue/{id}             one job (404: none)
    POST   queue/{id}/cancel      a waiting job is dropped, a running one stops after its step (409: already ended)
    POST   queue/{id}/pause       that job is passed over (the next one runs); a running one stops after its step
    POST   queue/{id}/resume      a paused job waits in its place again (409: it is not paused)
    POST   queue/{id}/move        {"to": N}: its place among those still to run
    DELETE queue/{id}             remove an ended or waiting job (409: running)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from fastapi import Body, FastAPI, HTTPException

from ..config import speak
from ..run_queue.background import BackgroundRunner
from ..run_queue.store import QueuedJob


def job_dict(job: QueuedJob) -> dict:
    out = dataclasses.asdict(job)
    out.pop("path", None)
    return out


def add_queue_routes(app: FastAPI, prefix: str, runner: BackgroundRunner, dependencies: list | None = None,
                     check: Callable[[object], None] = lambda cfg: None) -> None:
    """``check(cfg)`` refuses (ValueError) a job this host may not run (the WebUI: folders outside its own)."""
    queue = runner.queue
    deps = dependencies or []

    def find(job_id: str) -> QueuedJob:
        try:
            return queue.get(job_id)
        except ValueError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    def listing():
        return {**runner.status(), "jobs": [job_dict(j) for j in queue.jobs()]}

    def add(body: dict = Body(...)):
        from .. import runs
        from ..config import from_dict

        if not isinstance(body, dict) or not isinstance(body.get("options"), dict):
            raise HTTPException(status_code=422, detail='send {"command": "train-embedding", "options": {...}}')
        unknown = sorted(set(body) - {"command", "options"})
        if unknown:
            raise HTTPException(status_code=422, detail=f"unknown key(s): {', '.join(unknown)}; send command and "
                                                        f"options")
        try:
            command = str(body.get("command", ""))
            check(from_dict(runs.config_for_command(command), body["options"]))
            return job_dict(queue.add(command, body["options"]))
        except (TypeError, ValueError) as e:
            raise HTTPException(status_code=422, detail=speak(str(e), "api")) from None

    def start():
        if not runner.start():
            raise HTTPException(status_code=409, detail="the queue is already running")
        return runner.status()

    def stop():
        runner.stop_after_current()
        return runner.status()

    def pause():
        queue.pause()
        return runner.status()

    def resume():
        queue.resume()
        return runner.status()

    def get(job_id: str):
        return job_dict(find(job_id))

    def acted(job_id: str, action):  # a job's state change; one its state does not allow is a 409 with the reason
        job = find(job_id)
        try:
            return job_dict(action(job.id))
        except ValueError as e:
            raise HTTPException(status_code=409, detail=str(e)) from None

    def cancel(job_id: str):
        return acted(job_id, queue.cancel)

    def pause_job(job_id: str):
        return acted(job_id, queue.pause_job)

    def resume_job(job_id: str):
        return acted(job_id, queue.resume_job)

    def move(job_id: str, body: dict = Body(...)):
        job = find(job_id)
        to = body.get("to") if isinstance(body, dict) else None
        if not isinstance(to, int) or isinstance(to, bool):
            raise HTTPException(status_code=422, detail='send {"to": N}, N the place (1 = next)')
        try:
            return job_dict(queue.move(job.id, to))
        except ValueError as e:
            raise HTTPException(status_code=409 if "only a job" in str(e) else 422, detail=str(e)) from None

    def remove(job_id: str):
        job = find(job_id)
        try:
            queue.remove(job.id)
        except ValueError as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        return {"removed": job.id}

    base = f"{prefix}/queue"
    app.add_api_route(base, listing, methods=["GET"], dependencies=deps)
    app.add_api_route(base, add, methods=["POST"], dependencies=deps)
    for name, fn in (("run", start), ("stop", stop), ("pause", pause), ("resume", resume)):
        app.add_api_route(f"{base}/{name}", fn, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{base}/{{job_id}}", get, methods=["GET"], dependencies=deps)
    app.add_api_route(f"{base}/{{job_id}}", remove, methods=["DELETE"], dependencies=deps)
    for name, fn in (("cancel", cancel), ("pause", pause_job), ("resume", resume_job)):
        app.add_api_route(f"{base}/{{job_id}}/{name}", fn, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{base}/{{job_id}}/move", move, methods=["POST"], dependencies=deps)
