"""The training queue: jobs are files in a folder, run one after another; a kill -9 of the runner loses nothing (the
cut-off job continues from its last checkpoint when the queue runs again)."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from scal_sdt import cli
from scal_sdt.demo_data import make_concept_folder
from scal_sdt.run_queue.runner import QueueBusy, run_queue, runner_lock, train_here
from scal_sdt.run_queue.store import QueueFolder
from scal_sdt.textual_inversion.format import load_embedding
from scal_sdt.training.checkpoints import CheckpointStore
from scal_sdt.training.report import Reporter

ROOT = Path(__file__).resolve().parents[1]


def options(name, steps=3, **extra):
    return {"name": name, "model": "tiny-sd1", "data": "demo", "steps": steps, **extra}


def small_data(tmp_path):
    return {"data": str(make_concept_folder(tmp_path / "data", count=2, size=32)), "resolution": 32}


def test_jobs_are_files_listed_moved_cancelled_and_paused(tmp_path):
    queue = QueueFolder(tmp_path / "q")
    a, b, c = (queue.add("train-embedding", options(n)) for n in "abc")
    assert [j.name for j in queue.jobs()] == ["a", "b", "c"]
    assert sorted(p.name for p in queue.root.iterdir()) == sorted(f"job-{j.id}.toml" for j in (a, b, c))
    queue.move(c.id, 1)
    assert [j.name for j in queue.jobs()] == ["c", "a", "b"]
    queue.cancel(a.id[:-1])  # the start of an id is enough when it is unique
    assert queue.get(a.id).state == "cancelled"
    with pytest.raises(ValueError, match="only a queued, paused or running job"):
        queue.cancel(a.id)
    queue.pause()
    assert QueueFolder(tmp_path / "q").paused
    queue.resume()
    assert not queue.paused
    assert not list(queue.root.glob("*.tmp"))  # written by rename: nothing half-written left beside


def test_bad_options_are_refused_when_added_not_at_night(tmp_path):
    queue = QueueFolder(tmp_path / "q")
    with pytest.raises(ValueError, match="vectors must be ≥ 1"):
        queue.add("train-embedding", options("x", vectors=0))
    with pytest.raises(ValueError, match="command must be one of"):
        queue.add("generate", options("x"))
    assert queue.jobs() == []


def test_runner_takes_jobs_in_order_skips_cancelled_and_stops_when_paused(tmp_path):
    queue = QueueFolder(tmp_path / "q")
    jobs = [queue.add("train-embedding", options(n)) for n in ("first", "second", "dropped", "third")]
    queue.cancel(jobs[2].id)
    queue.move(jobs[3].id, 2)
    seen = []

    def train(cfg, explicit, reporter):
        seen.append(cfg.name)
        assert explicit == {"name", "model", "data", "steps"}  # what the job set: presets fill in only the rest
        if cfg.name == "second":
            queue.pause()  # the queue finishes this one and takes no next
        return SimpleNamespace(interrupted=False, step=cfg.steps, final_path=f"{cfg.name}.safetensors")

    ended = run_queue(queue, train, lambda job: Reporter(), say=lambda _: None)
    assert seen == ["first", "third", "second"] and [j.state for j in ended] == ["done"] * 3
    assert queue.get(jobs[2].id).state == "cancelled"


def test_a_failing_job_is_marked_and_the_queue_goes_on(tmp_path):
    queue = QueueFolder(tmp_path / "q")
    bad, good = queue.add("train-embedding", options("bad")), queue.add("train-embedding", options("good"))

    def train(cfg, explicit, reporter):
        if cfg.name == "bad":
            raise FileNotFoundError("no such data")
        return SimpleNamespace(interrupted=False, step=3, final_path="good.safetensors")

    run_queue(queue, train, lambda job: Reporter(), say=lambda _: None)
    assert queue.get(bad.id).state == "failed" and "no such data" in queue.get(bad.id).message
    assert queue.get(good.id).state == "done"


def test_one_runner_per_folder(tmp_path):
    queue = QueueFolder(tmp_path / "q")
    with runner_lock(queue):
        with pytest.raises(QueueBusy, match="another process"):
            run_queue(queue, None, None)


def test_cancelling_the_running_job_stops_it_after_its_step(tmp_path):
    queue = QueueFolder(tmp_path / "q")
    job = queue.add("train-embedding", options("long", steps=1000))
    steps = []

    def train(cfg, explicit, reporter):
        for step in range(1, cfg.steps + 1):
            if reporter.should_stop():
                return SimpleNamespace(interrupted=True, step=step - 1, final_path=None)
            reporter.step({"step": step, "loss": 0.0})
            steps.append(step)
            if step == 3:
                queue.cancel(job.id)  # as `scal-sdt queue cancel` from another shell
                reporter._checked = 0.0  # (the runner reads the file once a second; no need to wait here)
        return SimpleNamespace(interrupted=False, step=cfg.steps, final_path="x")

    run_queue(queue, train, lambda j: Reporter(), say=lambda _: None)
    done = queue.get(job.id)
    assert done.state == "cancelled" and done.step == 3 and len(steps) == 3


def _loss_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "loss.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_two_jobs_in_order_survive_a_kill_9_of_the_runner(tmp_path):
    q = tmp_path / "q"
    queue = QueueFolder(q)
    common = dict(save_every=2, preview_every=0, batch_size=1, lr="0.01", **small_data(tmp_path))
    first = queue.add("train-embedding", options("first", steps=16, out=str(tmp_path / "emb"),
                                                 log_dir=str(tmp_path / "run-first"), **common))
    second = queue.add("train-embedding", options("second", steps=4, out=str(tmp_path / "emb"),
                                                   log_dir=str(tmp_path / "run-second"), **common))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "extensions_builtin"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scal_sdt.cli", "queue", "run", "--queue", str(q)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = CheckpointStore(tmp_path / "run-first")
    deadline = time.monotonic() + 300
    try:
        while not store.complete():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # as a power cut would: no handler runs
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    cut = queue.get(first.id)
    assert cut.state == "running" and queue.get(second.id).state == "queued"  # the file says what was going on
    killed_at = max(c.step for c in store.complete())
    assert killed_at < 16, "the first job ended before the kill; the test proves nothing"

    assert cli.main(["queue", "run", "--queue", str(q)]) == 0
    a, b = queue.get(first.id), queue.get(second.id)
    assert a.state == b.state == "done" and a.step == 16 and b.step == 4
    assert a.attempts == 2 and b.attempts == 1 and a.finished <= b.started  # in order, the first one continued
    assert load_embedding(tmp_path / "emb" / "first.safetensors").step == 16
    assert load_embedding(tmp_path / "emb" / "second.safetensors").step == 4
    assert _loss_steps(tmp_path / "run-first") == list(range(1, 17))  # each step once: resumed, not restarted


def test_a_paused_job_is_passed_over_and_runs_once_resumed(tmp_path, capsys):
    q = tmp_path / "q"
    queue = QueueFolder(q)
    held, a, b = (queue.add("train-embedding", options(n)) for n in ("held", "a", "b"))
    assert cli.main(["queue", "pause", held.id, "--queue", str(q)]) == 0  # `scal-sdt queue pause JOB`
    assert "passes it over" in capsys.readouterr().out
    assert queue.get(held.id).state == "paused" and not queue.paused  # the job, not the queue
    seen = []

    def train(cfg, explicit, reporter):
        seen.append(cfg.name)
        return SimpleNamespace(interrupted=False, step=cfg.steps, final_path=f"{cfg.name}.safetensors")

    run_queue(queue, train, lambda job: Reporter(), say=lambda _: None)
    assert seen == ["a", "b"] and queue.get(held.id).state == "paused"
    with pytest.raises(ValueError, match="only a queued or running job can be paused"):
        queue.pause_job(a.id)  # done
    with pytest.raises(ValueError, match="only a paused job can be resumed"):
        queue.resume_job(b.id)
    assert cli.main(["queue", "resume", held.id, "--queue", str(q)]) == 0
    assert queue.get(held.id).state == "queued"
    run_queue(queue, train, lambda job: Reporter(), say=lambda _: None)
    assert seen == ["a", "b", "held"] and queue.get(held.id).state == "done"


class PauseAt(Reporter):
    """Pauses its job at ``step`` from "another shell" (the job file), as `scal-sdt queue pause JOB` does."""

    def __init__(self, queue, job_id, step):
        self.queue, self.job_id, self.at = queue, job_id, step

    def step(self, info):
        if info["step"] == self.at:
            self.queue.pause_job(self.job_id)
            time.sleep(1.1)  # the runner reads the job file at most once a second: a quiet box's steps are faster


def test_pausing_the_running_job_runs_the_next_and_resumes_from_its_checkpoint(tmp_path):
    """A real run paused at step 2 of 4 stops after its step (its state saved), the next job runs; resumed, the
    first continues from step 2: every step logged once, the embedding at step 4."""
    queue = QueueFolder(tmp_path / "q")
    common = dict(save_every=0, preview_every=0, batch_size=1, lr="0.01", out=str(tmp_path / "emb"),
                  **small_data(tmp_path))
    first = queue.add("train-embedding", options("first", steps=4, log_dir=str(tmp_path / "run-first"), **common))
    second = queue.add("train-embedding", options("second", steps=1, log_dir=str(tmp_path / "run-second"), **common))
    reporters = {first.id: PauseAt(queue, first.id, 2)}
    ended = run_queue(queue, train_here, lambda job: reporters.get(job.id, Reporter()), say=lambda _: None)
    assert [(j.id, j.state) for j in ended] == [(first.id, "paused"), (second.id, "done")]
    paused = queue.get(first.id)
    assert paused.step == 2 and paused.message == "paused at step 2"
    assert queue.resume_job(first.id).state == "queued"
    ended = run_queue(queue, train_here, lambda job: Reporter(), say=lambda _: None)
    done = queue.get(first.id)
    assert [j.id for j in ended] == [first.id] and done.state == "done" and done.step == 4 and done.attempts == 2
    assert load_embedding(tmp_path / "emb" / "first.safetensors").step == 4
    assert _loss_steps(tmp_path / "run-first") == list(range(1, 5))  # resumed at 2, not restarted
