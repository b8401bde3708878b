"""Background jobs (API and standalone page): progress, interrupt, failure kept to the job."""
import threading
import time

import torch

from scal_sdt.jobs import FanOut, JobRegistry
from scal_sdt.training.loop import run_loop
from scal_sdt.training.options import TrainingOptions
from scal_sdt.ui.loss_svg import loss_svg
from recording import RecordingReporter
from test_loop import RegressionJob


def wait(job, timeout=30):
    end = time.time() + timeout
    while job.status in ("queued", "running") and time.time() < end:
        time.sleep(0.02)
    return job


def test_a_job_reports_progress_and_its_result(tmp_path):
    reg = JobRegistry()

    def work(reporter):
        res = run_loop(TrainingOptions(steps=12, save_every=0, preview_every=0, lr="0.05"), RegressionJob(), tmp_path,
                       reporter, torch.device("cpu"))
        return {"step": res.step, "interrupted": res.interrupted}

    job = wait(reg.start("regression", work))
    assert job.status == "finished" and job.result == {"step": 12, "interrupted": False}
    assert job.step == 12 and job.total == 12 and job.loss is not None


def test_interrupt_stops_after_the_current_step(tmp_path):
    reg = JobRegistry()
    gate = threading.Event()

    class Slow(RegressionJob):
        def loss(self):
            gate.wait(5)
            time.sleep(0.01)
            return super().loss()

    def work(reporter):
        res = run_loop(TrainingOptions(steps=10_000, save_every=0, preview_every=0), Slow(), tmp_path, reporter,
                       torch.device("cpu"))
        return {"step": res.step, "interrupted": res.interrupted}

    job = reg.start("slow", work)
    assert reg.interrupt(job.id) and not reg.interrupt("nope")
    gate.set()
    wait(job)
    assert job.status == "interrupted" and job.result["step"] < 10_000


def test_a_failing_job_is_reported_and_the_registry_goes_on():
    reg = JobRegistry(lock=threading.Lock())

    def boom(reporter):
        raise ValueError("data: dataset folder does not exist: /x")

    bad = wait(reg.start("bad", boom))
    assert bad.status == "failed" and "dataset folder" in bad.error
    good = wait(reg.start("good", lambda r: {"ok": True}))
    assert good.status == "finished" and good.result == {"ok": True}


def test_fan_out_reaches_every_reporter_and_any_can_stop():
    a, b = RecordingReporter(), RecordingReporter(stop_at=3)
    both = FanOut(a, b)
    both.message("hello")
    both.step({"step": 3, "loss": 1.0})
    assert a.messages == b.messages == ["hello"] and both.should_stop()


def test_loss_svg_draws_the_curve():
    svg = loss_svg([1.0, 0.8, 0.9, 0.5])
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "0.5000" in svg
    assert loss_svg([1.0]) == ""


def test_jobs_outlive_a_restart_as_interrupted_with_their_request(tmp_path):
    store = tmp_path / "jobs.json"
    release = threading.Event()
    reg = JobRegistry(lock=threading.Lock(), store=store)
    done = reg.start("train-embedding", lambda rep: {"step": 3}, request={"name": "a", "steps": 3})
    for _ in range(200):
        if reg.get(done.id).status == "finished":
            break
        time.sleep(0.01)
    running = reg.start("train-embedding", lambda rep: release.wait(5) and {}, request={"name": "b", "steps": 9})
    waiting = reg.start("train-embedding", lambda rep: {}, request={"name": "c"})
    for _ in range(200):
        if reg.get(running.id).status == "running":
            break
        time.sleep(0.01)
    assert reg.get(waiting.id).status == "queued"

    again = JobRegistry(store=store)  # the server came back: the same file read by a new process
    assert again.get(done.id).status == "finished" and again.get(done.id).result == {"step": 3}
    for job, status in ((running, "running"), (waiting, "queued")):
        seen = again.get(job.id)
        assert seen.status == "interrupted", seen
        assert f"restarted while this job was {status}" in seen.messages[-1] and "resume: true" in seen.messages[-1]
        assert seen.request == job.request
    release.set()


def test_a_torn_job_list_starts_a_new_one(tmp_path, capsys):
    store = tmp_path / "jobs.json"
    store.write_text('{"jobs": [{"id": "x", "kind"')
    reg = JobRegistry(store=store)
    assert reg.jobs == {} and "could not read the job list" in capsys.readouterr().out
    job = reg.start("tag", lambda rep: {})
    for _ in range(200):
        if reg.get(job.id).status == "finished":
            break
        time.sleep(0.01)
    assert JobRegistry(store=store).get(job.id).status == "finished"
