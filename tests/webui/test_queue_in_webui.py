"""The training queue inside the REAL WebUI (A1111 1.8, Gradio 3.41): with Settings → SCAL-SDT "run the queue when
the WebUI starts" on, a job left in the queue folder runs by itself at start-up; in a browser a user adds jobs from
the Embedding tab ("Add to queue"), saves and loads the form's settings, and in the SCAL-SDT Queue tab pauses one job,
moves one, cancels one and runs the queue (the paused one is passed over, then resumed); over /scal-sdt/v1/queue a
job holds the WebUI's GPU queue lock, so a txt2img asked for meanwhile waits for the job's end.

Needs WEBUI_DIR / WEBUI_PYTHON (see conftest.py) and, for the browser test, Chromium + chromedriver + selenium (see
browser.py). Tiny runs: tiny-sd1, 32 px, a few steps.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from scal_sdt.demo_data import make_concept_folder
from scal_sdt.run_queue.store import QueueFolder

from . import browser as br
from .conftest import WebUIError, start_webui

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 300  # a 4-step job on a busy 2-core box: 5-60 s
QUEUE = "/scal-sdt/v1/queue"


def tiny_job(name: str, data: Path, steps: int = 4) -> dict:
    return {"name": name, "data": str(data), "steps": steps, "resolution": 32, "batch_size": 1, "lr": "0.01",
            "save_every": 0, "preview_every": 0}


@pytest.fixture(scope="module")
def server(webui_install, webui_dir_snapshot, tiny_checkpoint, tmp_path_factory):
    """A WebUI with our extension and the queue setting on, started with one job already waiting."""
    webui_dir, python = webui_install
    root = tmp_path_factory.mktemp("webui-queue")
    data = make_concept_folder(root / "data" / "stars", count=2, size=32)
    QueueFolder(root / "data" / "scal-sdt-queue").add("train-embedding", tiny_job("bootjob", data))
    try:
        server = start_webui(webui_dir, python, root, tiny_checkpoint.folder, tiny_checkpoint("tiny-sd1"),
                             extensions=[REPO], settings={"scal_sdt_queue_autostart": True})
    except WebUIError as e:
        pytest.fail(str(e))
    server.stars = data
    yield server
    server.stop()


def jobs(server) -> dict[str, dict]:
    """name -> job, as the API lists them."""
    return {j["options"]["name"]: j for j in server.get(QUEUE)["jobs"]}


def wait_state(server, name: str, states: tuple[str, ...], timeout: float = JOB_TIMEOUT_S) -> dict:
    def reached():
        job = jobs(server).get(name)
        return job if job and job["state"] in states else None

    try:
        return br.wait_for(reached, timeout, f"job {name} {'/'.join(states)}", interval=0.5)
    except br.Timeout as e:
        raise br.Timeout(f"{e}; queue: {server.get(QUEUE)}\nWebUI log:\n{server.log_tail()}") from None


def test_the_queue_runs_with_the_webui_when_the_setting_asks(server):
    job = wait_state(server, "bootjob", ("done", "failed"))
    assert job["state"] == "done" and job["step"] == 4, job
    assert (server.data_dir / "embeddings" / "bootjob.safetensors").is_file()
    assert any("started with the WebUI: 1 job(s) waiting" in line for line in server.get(QUEUE)["log"])
    assert "bootjob" in server.get("/sdapi/v1/embeddings")["loaded"]  # reloaded into the WebUI after the job


def wait_idle(server, timeout: float = JOB_TIMEOUT_S) -> None:
    br.wait_for(lambda: not server.get(QUEUE)["running"], timeout, "the queue runner to stop", interval=0.5)


def test_a_job_holds_the_gpu_queue_so_a_txt2img_waits_for_its_end(server):
    wait_idle(server)  # the start-up run has ended
    added = server.post(QUEUE, {"command": "train-embedding", "options": tiny_job("lockjob", server.stars, 20)})
    assert added["state"] == "queued"
    with pytest.raises(WebUIError, match="404"):
        server.post(f"{QUEUE}/nosuchjob/pause")
    server.post(f"{QUEUE}/run")
    wait_state(server, "lockjob", ("running", "done", "failed"))
    asked = time.time()
    server.post("/sdapi/v1/txt2img", {"prompt": "a star", "steps": 2, "width": 64, "height": 64},
                timeout=JOB_TIMEOUT_S)  # the WebUI's queue lock: served once the job has let it go
    answered = time.time()
    saved = (server.data_dir / "embeddings" / "lockjob.safetensors").stat().st_mtime  # written under the lock
    assert saved > asked, "the job ended before the txt2img was asked: the test proves nothing"
    assert answered >= saved, (asked, saved, answered)
    job = wait_state(server, "lockjob", ("done", "failed"))
    assert job["state"] == "done" and job["step"] == 20, job


def queue_rows(page: br.WebUIPage) -> dict[str, tuple[str, str]]:
    """name -> (job id, state) from the Queue tab's table."""
    rows = page.js("return Array.from(document.querySelectorAll('#scal_sdt_queue_table tr[data-state]'))"
                   ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    return {cells[4]: (cells[1], cells[2]) for cells in rows}


def wait_rows(page: br.WebUIPage, server, want: dict[str, str], timeout: float = JOB_TIMEOUT_S) -> dict:
    """Until the table (which refreshes itself) shows each named job in its wanted state."""
    def shown():
        rows = queue_rows(page)
        return rows if all(rows.get(n, ("", ""))[1] == s for n, s in want.items()) else None

    try:
        return br.wait_for(shown, timeout, f"the queue table showing {want}", interval=0.5)
    except br.Timeout as e:
        raise br.Timeout(f"{e}; table: {queue_rows(page)}; note: {page.by_id('scal_sdt_queue_note').text!r}\n"
                         f"WebUI log:\n{server.log_tail()}") from None


@pytest.mark.skipif(br.unavailable() is not None, reason=f"no headless browser: {br.unavailable()}")
def test_a_user_queues_pauses_moves_cancels_and_runs_jobs_in_the_tabs(server, tmp_path):
    driver = br.launch(tmp_path / "chromium-profile")
    try:
        page = br.WebUIPage(driver, server.base_url).open()
        # the setting is in Settings (section SCAL-SDT), on in this WebUI's config
        assert page.js("const box = document.querySelector('#setting_scal_sdt_queue_autostart input');"
                       "return box && box.checked") is True
        page.open_tab("Train")
        page.open_tab("SCAL-SDT Embedding", nav="#tab_train .tab-nav")
        page.set_value("scal_sdt_ti_data", str(server.stars))
        page.set_value("scal_sdt_ti_steps", 4)
        page.open_accordion("model and data", "scal_sdt_ti_tab")
        page.set_value("scal_sdt_ti_resolution", 32)
        page.open_accordion("output", "scal_sdt_ti_tab")
        page.set_value("scal_sdt_ti_save_every", 0)
        page.set_value("scal_sdt_ti_preview_every", 0)
        ids = {}
        for name in ("first", "second", "third"):
            page.set_value("scal_sdt_ti_name", name)
            page.click("scal_sdt_ti_enqueue")
            try:
                said = br.wait_for(lambda: re.search(rf"queued (\S+) \(train-embedding {name}\)",
                                                     page.by_id("scal_sdt_ti_result").text), 60, f"{name} queued")
            except br.Timeout as e:
                raise br.Timeout(f"{e}; the tab says {page.by_id('scal_sdt_ti_result').text!r}") from None
            ids[name] = said.group(1)

        # Save settings / Load settings: the form written to a file and read back
        saved = server.data_dir / "third.toml"
        page.open_accordion("settings file", "scal_sdt_ti_tab")
        page.set_value("scal_sdt_ti_settings_path", str(saved))
        page.click("scal_sdt_ti_save_settings")
        br.wait_for(lambda: f"saved {saved}" in page.by_id("scal_sdt_ti_result").text, 30, "settings saved")
        text = saved.read_text()
        assert 'command = "train-embedding"' in text and 'name = "third"' in text and "resolution = 32" in text
        page.set_value("scal_sdt_ti_name", "changed")
        page.click("scal_sdt_ti_load_settings")
        br.wait_for(lambda: page.field("scal_sdt_ti_name").get_attribute("value") == "third", 30,
                    "the name loaded back")
        assert "loaded" in page.by_id("scal_sdt_ti_result").text

        # the Queue tab: pause "second", move "third" to the front, cancel "first", run
        page.open_tab("SCAL-SDT Queue", nav="#tab_train .tab-nav")
        wait_rows(page, server, {"first": "queued", "second": "queued", "third": "queued"}, timeout=30)
        page.set_value("scal_sdt_queue_job", ids["second"])
        page.click("scal_sdt_queue_pause_job")
        wait_rows(page, server, {"second": "paused"}, timeout=30)
        page.set_value("scal_sdt_queue_job", ids["third"])
        page.set_value("scal_sdt_queue_place", 1)
        page.click("scal_sdt_queue_move")
        br.wait_for(lambda: f"moved {ids['third']} to place 1" in page.by_id("scal_sdt_queue_note").text, 30,
                    "moved")
        page.set_value("scal_sdt_queue_job", ids["first"])
        page.click("scal_sdt_queue_cancel")
        wait_rows(page, server, {"first": "cancelled"}, timeout=30)
        names = [n for n in queue_rows(page) if n in ids]
        assert names.index("third") < names.index("second"), names  # moved ahead
        wait_idle(server)
        page.click("scal_sdt_queue_run")
        # the table follows the runner by itself (no click): "third" runs, "second" is passed over
        wait_rows(page, server, {"third": "done", "second": "paused", "first": "cancelled"})
        br.wait_for(lambda: "not running" in page.by_id("scal_sdt_queue_status").text, 60, "the runner to stop")
        page.set_value("scal_sdt_queue_job", ids["second"])
        page.click("scal_sdt_queue_resume_job")
        wait_rows(page, server, {"second": "queued"}, timeout=30)
        page.click("scal_sdt_queue_run")
        wait_rows(page, server, {"second": "done"})
        page.screenshot(tmp_path / "queue-tab.png")
        assert page.console_errors(ours_only=True) == []
    finally:
        driver.quit()
    done = jobs(server)
    assert done["third"]["finished"] <= done["second"]["started"]  # in the order the tab set
    assert done["first"]["state"] == "cancelled" and done["first"]["attempts"] == 0
    for name in ("second", "third"):
        assert (server.data_dir / "embeddings" / f"{name}.safetensors").is_file()
        assert done[name]["step"] == 4
