"""Ten API clients at once against the real WebUI: starting, polling and interrupting trainings. One job trains at
a time (the WebUI's queue), none is lost, every id is answered, txt2img is still served while jobs wait, and the job
list is kept on disk so a restart reports what was running instead of forgetting it. Bounded in count and time,
on 127.0.0.1 only."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from .test_extension_in_webui import REPO

CLIENTS = 10


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("tiny-sd1"), extensions=[REPO], name="webui-scal-sdt")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from scal_sdt.demo_data import make_concept_folder

    return make_concept_folder(tmp_path_factory.mktemp("load-data") / "stars", count=4)


def test_ten_clients_at_once(server, data_dir):
    started: dict[int, dict] = {}
    errors: list[str] = []
    running_seen: list[int] = []
    stop_watching = threading.Event()

    def client(i: int) -> None:
        try:
            job = server.post("/scal-sdt/v1/train/embedding", {
                "name": f"load{i}-{int(time.time())}", "data": str(data_dir), "steps": 3 if i % 3 else 40,
                "resolution": 64, "preview_every": 0, "save_every": 0, "overwrite": True})
            started[i] = job
            if i % 3 == 0:  # every third client changes its mind
                time.sleep(0.2)
                server.post(f"/scal-sdt/v1/jobs/{job['id']}/interrupt")
            started[i] = server.wait_job(job, timeout=600)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    def watch() -> None:
        deadline = time.monotonic() + 600
        while not stop_watching.is_set() and time.monotonic() < deadline:
            jobs = server.get("/scal-sdt/v1/jobs")
            running_seen.append(sum(j["status"] == "running" and j["kind"] == "train-embedding" for j in jobs))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    images, _ = server.txt2img(prompt="a star")  # served while the trainings queue up
    assert images
    for t in threads:
        t.join(timeout=700)
    stop_watching.set()
    watcher.join()

    assert not errors, errors
    assert len(started) == CLIENTS and len({j["id"] for j in started.values()}) == CLIENTS
    for i, job in started.items():
        assert job["status"] in (("finished", "interrupted") if i % 3 == 0 else ("finished",)), job
        assert server.get(f"/scal-sdt/v1/jobs/{job['id']}")["id"] == job["id"]
    assert max(running_seen) == 1, "two trainings ran on the device at once"
    listed = {j["id"] for j in server.get("/scal-sdt/v1/jobs")}
    assert {j["id"] for j in started.values()} <= listed
    stored = json.loads((Path(server.data_dir) / "scal-sdt-jobs.json").read_text())["jobs"]
    assert {j["id"] for j in started.values()} <= {j["id"] for j in stored}  # what a restart reads back
    assert server.alive()
