"""/scal-sdt/v1/queue (the routes the WebUI mounts) and the page's Queue tab: 4xx on bad input, jobs in order."""
import threading
import time
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from scal_sdt.run_queue.background import BackgroundRunner
from scal_sdt.run_queue.store import QueueFolder
from scal_sdt.webui.queue_api import add_queue_routes

PREFIX = "/scal-sdt/v1"
OPTIONS = {"name": "a", "model": "tiny-sd1", "data": "demo", "steps": 3}


@pytest.fixture
def api(tmp_path):
    ran, gate = [], threading.Event()
    gate.set()

    def train(cfg, explicit, reporter):
        gate.wait(30)
        ran.append(cfg.name)
        return SimpleNamespace(interrupted=False, step=cfg.steps, final_path=f"{cfg.name}.safetensors")

    def refuse_outside(cfg):
        if cfg.out.startswith("/"):
            raise ValueError(f"out {cfg.out} is outside the WebUI's folders")

    runner = BackgroundRunner(QueueFolder(tmp_path / "q"), train)
    app = FastAPI()
    add_queue_routes(app, PREFIX, runner, check=refuse_outside)
    return SimpleNamespace(client=TestClient(app), runner=runner, ran=ran, gate=gate)


def wait_idle(runner, timeout=30):
    deadline = time.monotonic() + timeout
    while runner.running:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("body,words", [
    ({"command": "train-embedding"}, "options"),
    ({"command": "train-embedding", "options": {**OPTIONS, "steps": 0}}, "steps must be ≥ 1"),
    ({"command": "train-embedding", "options": {**OPTIONS, "stepz": 3}}, "stepz"),
    ({"command": "generate", "options": OPTIONS}, "command must be one of"),
    ({"command": "train-embedding", "options": OPTIONS, "extra": 1}, "unknown key"),
    ({"command": "train-embedding", "options": {**OPTIONS, "out": "/etc"}}, "outside"),
])
def test_bad_jobs_are_refused_with_422_and_the_reason(api, body, words):
    r = api.client.post(f"{PREFIX}/queue", json=body)
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert api.client.get(f"{PREFIX}/queue").json()["jobs"] == []


def test_jobs_are_added_moved_run_in_order_and_removed(api):
    ids = [api.client.post(f"{PREFIX}/queue", json={"command": "train-embedding", "options": {**OPTIONS, "name": n}})
           .json()["id"] for n in ("one", "two", "three")]
    assert api.client.post(f"{PREFIX}/queue/{ids[2]}/move", json={"to": 1}).status_code == 200
    assert api.client.post(f"{PREFIX}/queue/{ids[1]}/cancel").json()["state"] == "cancelled"
    assert api.client.post(f"{PREFIX}/queue/{ids[0]}/move", json={"to": "x"}).status_code == 422
    assert api.client.get(f"{PREFIX}/queue/nope").status_code == 404
    api.gate.clear()
    assert api.client.post(f"{PREFIX}/queue/run").status_code == 200
    assert api.client.post(f"{PREFIX}/queue/run").status_code == 409  # one runner
    deadline = time.monotonic() + 30
    while api.client.get(f"{PREFIX}/queue/{ids[2]}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert api.client.delete(f"{PREFIX}/queue/{ids[2]}").status_code == 409  # running now
    api.gate.set()
    wait_idle(api.runner)
    assert api.ran == ["three", "one"]
    listing = api.client.get(f"{PREFIX}/queue").json()
    assert [(j["name"] if "name" in j else j["options"]["name"], j["state"]) for j in listing["jobs"]] == \
        [("three", "done"), ("one", "done"), ("two", "cancelled")]
    assert api.client.post(f"{PREFIX}/queue/{ids[0]}/cancel").status_code == 409  # already done
    assert api.client.delete(f"{PREFIX}/queue/{ids[0]}").json() == {"removed": ids[0]}
    assert len(api.client.get(f"{PREFIX}/queue").json()["jobs"]) == 2


def test_pause_holds_the_next_job(api):
    api.client.post(f"{PREFIX}/queue", json={"command": "train-embedding", "options": OPTIONS})
    assert api.client.post(f"{PREFIX}/queue/pause").json()["paused"] is True
    api.client.post(f"{PREFIX}/queue/run")
    wait_idle(api.runner)
    assert api.ran == [] and "paused" in " ".join(api.runner.log)
    api.client.post(f"{PREFIX}/queue/resume")
    api.client.post(f"{PREFIX}/queue/run")
    wait_idle(api.runner)
    assert api.ran == ["a"]


def test_one_job_paused_over_http_is_passed_over(api):
    held = api.client.post(f"{PREFIX}/queue", json={"command": "train-embedding", "options": OPTIONS}).json()
    api.client.post(f"{PREFIX}/queue", json={"command": "train-embedding", "options": {**OPTIONS, "name": "b"}})
    r = api.client.post(f"{PREFIX}/queue/{held['id']}/pause")
    assert r.status_code == 200 and r.json()["state"] == "paused"
    assert api.client.post(f"{PREFIX}/queue/{held['id']}/pause").status_code == 409  # paused already
    assert api.client.post(f"{PREFIX}/queue/nosuchjob/pause").status_code == 404
    api.client.post(f"{PREFIX}/queue/run")
    wait_idle(api.runner)
    assert api.ran == ["b"] and api.client.get(f"{PREFIX}/queue/{held['id']}").json()["state"] == "paused"
    assert api.client.post(f"{PREFIX}/queue/{held['id']}/resume").json()["state"] == "queued"
    assert api.client.post(f"{PREFIX}/queue/{held['id']}/resume").status_code == 409  # not paused
    api.client.post(f"{PREFIX}/queue/run")
    wait_idle(api.runner)
    assert api.ran == ["b", "a"]


def test_the_page_has_a_queue_tab_and_its_forms_add_to_it(tmp_path):
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.ui.standalone import build_app
    from scal_sdt.ui_config import UiConfig

    app = build_app(UiConfig(model="tiny-sd1", queue=str(tmp_path / "q")))
    assert "scal_sdt_queue_table" in {getattr(b, "elem_id", None) for b in app.blocks.values()}
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_queue_pause_job", "scal_sdt_queue_resume_job", "scal_sdt_queue_note"} <= ids
    assert {"scal_sdt_ti_enqueue", "scal_sdt_lora_load_settings", "scal_sdt_db_save_settings"} <= ids
    message = app.scal_sdt_trainer.enqueue(EmbeddingConfig(name="paged", data="demo", steps=5))
    job, = QueueFolder(tmp_path / "q").jobs()
    assert job.id in message and job.options == {"name": "paged", "data": "demo", "steps": 5}


def test_each_job_holds_the_gpu_lock_and_a_generation_goes_between_two_jobs(tmp_path):
    """As the WebUI's queue lock: held for one job at a time; a generation waiting for it runs between two jobs."""
    from scal_sdt.run_queue.background import each_job_holding

    lock, events = threading.Lock(), []
    first_started = threading.Event()

    def train(cfg, explicit, reporter):
        assert lock.locked()
        events.append(f"start {cfg.name}")
        first_started.set()
        time.sleep(0.3)  # the generation below asks for the lock meanwhile
        events.append(f"end {cfg.name}")
        return SimpleNamespace(interrupted=False, step=cfg.steps, final_path="x")

    def generation():
        first_started.wait(30)
        with lock:
            events.append("generation")

    runner = BackgroundRunner(QueueFolder(tmp_path / "q"), each_job_holding(lock, train))
    for name in ("a", "b"):
        runner.queue.add("train-embedding", {**OPTIONS, "name": name})
    waiting = threading.Thread(target=generation)
    waiting.start()
    runner.start()
    wait_idle(runner)
    waiting.join(30)
    assert events == ["start a", "end a", "generation", "start b", "end b"] and not lock.locked()


def test_the_queue_starts_with_the_webui_only_when_the_setting_asks(tmp_path):
    from scal_sdt.run_queue.background import start_on_launch

    ran = []

    def train(cfg, explicit, reporter):
        ran.append(cfg.name)
        return SimpleNamespace(interrupted=False, step=cfg.steps, final_path="x")

    runner = BackgroundRunner(QueueFolder(tmp_path / "q"), train)
    assert start_on_launch(runner, asked=True) is False and "no job waiting" in runner.log[-1]
    runner.queue.add("train-embedding", OPTIONS)
    assert start_on_launch(runner, asked=False) is False  # the setting is off by default: nothing runs
    time.sleep(0.2)
    assert ran == [] and not runner.running
    assert start_on_launch(runner, asked=True) is True
    wait_idle(runner)
    assert ran == ["a"] and runner.queue.jobs()[0].state == "done"
    assert "1 job(s) waiting" in " ".join(runner.log)
