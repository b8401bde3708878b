"""The standalone page (`scal-sdt ui`) in a headless Chromium, as a user sees it: the basic / advanced training form,
a training that survives a reload (the page reattaches to it), the plot cleared at a new run, Generate numbering
its files on. Needs Chromium + chromedriver + selenium (tests/webui/browser.py says what is missing)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from webui import browser as br

_missing = br.unavailable()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"no headless browser: {_missing}")
gr = pytest.importorskip("gradio", reason="the standalone page needs gradio (pip install 'scal-sdt[ui]')")

TAB = "scal_sdt_ti_tab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page on tiny-sd1, in this process; the demo's form set up for a slow-enough short run (a plot every 10
    steps, 400 steps: the test interrupts it)."""
    import scal_sdt.ui.standalone as standalone
    from scal_sdt.ui_config import UiConfig

    root = tmp_path_factory.mktemp("page")
    saved = dict(standalone.TOY_DEMO)
    standalone.TOY_DEMO.update(steps=400, save_every=10, preview_every=10, preview_steps=1, batch_size=1)
    cwd = os.getcwd()
    os.chdir(root)  # run folders and outputs land here (and the page may show files under it)
    port = free_port()
    app = standalone.build_app(UiConfig(model="tiny-sd1", out=str(root / "emb")))
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **standalone.launch_options(app))
    try:
        yield type("Server", (), {"base_url": f"http://127.0.0.1:{port}", "root": root, "app": app})
    finally:
        app.close()
        os.chdir(cwd)
        standalone.TOY_DEMO.clear()
        standalone.TOY_DEMO.update(saved)


class Page(br.WebUIPage):
    def open(self, timeout: float = 60) -> "Page":
        self.driver.get(self.base_url)
        br.wait_for(lambda: self.js("return !!document.querySelector('#scal_sdt_ti_start button, #scal_sdt_ti_start')"
                                    " && document.querySelectorAll('button[role=tab]').length > 0"),
                    timeout, "the page to load")
        return self

    def reload(self, timeout: float = 60) -> "Page":
        self.driver.refresh()
        return self._wait_loaded(timeout)

    def _wait_loaded(self, timeout):
        br.wait_for(lambda: self.js("return document.querySelectorAll('button[role=tab]').length > 0"
                                    " && !!document.getElementById('scal_sdt_ti_start')"), timeout, "the page again")
        return self

    def tab(self, label: str) -> None:
        self.js("Array.from(document.querySelectorAll('button[role=tab]')).find(b => b.textContent.trim() === "
                "arguments[0]).click()", label)
        time.sleep(0.5)

    def text(self, elem_id: str) -> str:
        return self.js("const e = document.getElementById(arguments[0]); return e ? e.textContent : ''", elem_id)

    def img(self, elem_id: str) -> str | None:
        return self.js("const img = document.querySelector('#' + arguments[0] + ' img');"
                       "return img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null;", elem_id)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    driver = br.launch(tmp_path_factory.mktemp("chromium-profile"))
    yield Page(driver, server.base_url).open()
    driver.quit()


def shots(tmp_path: Path, name: str) -> list[Path]:
    out = [tmp_path / name]
    if os.environ.get("SCAL_SDT_SCREENSHOT_DIR"):
        out.append(Path(os.environ["SCAL_SDT_SCREENSHOT_DIR"]) / name)
    return out


def test_the_form_shows_the_basics_and_closes_the_rest(page, tmp_path):
    page.tab("Embedding")
    for f in ("name", "data", "init_text", "steps", "lr", "preset"):
        assert page.visible(f"scal_sdt_ti_{f}"), f
    for f in ("resolution", "out", "preview_prompt", "save_every"):
        assert not page.visible(f"scal_sdt_ti_{f}"), f  # in a closed accordion
    for group in ("embedding", "model_and_data", "optimisation", "memory", "output"):
        assert page.visible(f"scal_sdt_ti_group_{group}"), group
    assert page.visible("scal_sdt_ti_data_browse")
    height = page.js("return document.getElementById('scal_sdt_ti_start').closest('.row, .gr-row, .flex')"
                     ".getBoundingClientRect().height")
    assert height < 1400, height  # not one 3,500 px column any more
    png = page.screenshot(*shots(tmp_path, "scal-sdt-page-form.png"))
    assert br.picture_stats(png)["colours"] > 50


def wait_step(page: Page, at_least: int, timeout: float = 120) -> int:
    def step():
        text = page.text("scal_sdt_ti_progress")
        if "step " not in text:
            return None
        n = int(text.split("step ")[1].split("/")[0])
        return n if n >= at_least else None
    return br.wait_for(step, timeout, f"the progress at step {at_least}")


def test_a_reload_reattaches_to_the_running_training(page, server, tmp_path):
    page.tab("Embedding")
    page.set_value("scal_sdt_ti_name", "reloaded")
    page.click("scal_sdt_ti_start")
    wait_step(page, 12)
    br.wait_for(lambda: page.img("scal_sdt_ti_plot"), 60, "the loss plot")
    page.reload()
    # the fresh page knows the running training: its row, its live progress, its plot
    br.wait_for(lambda: "running" in page.text("scal_sdt_ti_jobs") and "reloaded" in page.text("scal_sdt_ti_jobs"),
                30, "the running training in the jobs table")
    first = wait_step(page, 1)
    wait_step(page, first + 5)  # still moving: the page follows it live
    assert br.wait_for(lambda: page.img("scal_sdt_ti_plot"), 60, "the loss plot after the reload")
    assert "<svg" in page.js("return document.getElementById('scal_sdt_ti_progress').innerHTML")
    page.screenshot(*shots(tmp_path, "scal-sdt-page-reattached.png"))
    page.click("scal_sdt_ti_interrupt")
    br.wait_for(lambda: "interrupted" in page.text("scal_sdt_ti_jobs"), 120, "the training interrupted")


# every 50 ms: was the loss plot empty at some point after the click?
WATCH_PLOT = """
window.scalSdtPlot = [];
window.scalSdtWatch = setInterval(() => {
  const img = document.querySelector('#scal_sdt_ti_plot img');
  window.scalSdtPlot.push(img && img.naturalWidth > 0 ? img.getAttribute('src') : null);
}, 50);
"""


def test_a_new_run_starts_with_an_empty_plot(page, server):
    page.tab("Embedding")
    old = br.wait_for(lambda: page.img("scal_sdt_ti_plot"), 30, "the last run's plot")
    page.js(WATCH_PLOT)
    page.click("scal_sdt_ti_start")  # the same name again: the last run's loss.png is still in its folder
    # the progress still reads the last run's step until the new run's first update: wait for the new run first
    br.wait_for(lambda: "running" in page.text("scal_sdt_ti_jobs"), 60, "the new run in the jobs table")
    wait_step(page, 12)
    br.wait_for(lambda: page.img("scal_sdt_ti_plot"), 60, "the new run's plot")
    seen = page.js("clearInterval(window.scalSdtWatch); return window.scalSdtPlot")
    first_empty = seen.index(None)  # cleared ...
    assert any(src for src in seen[first_empty:]), "never shown again"  # ... then this run's own
    assert old is not None
    page.click("scal_sdt_ti_interrupt")
    br.wait_for(lambda: page.text("scal_sdt_ti_jobs").count("interrupted") >= 2, 120, "the second run interrupted")


def test_generate_twice_gives_eight_files(page, server):
    out = server.root / "gen-out"
    page.tab("Generate")
    page.set_value("scal_sdt_gen_prompt", "a red star")
    page.set_value("scal_sdt_gen_out", str(out))
    page.set_value("scal_sdt_gen_steps", 2)
    for clicks in (1, 2):
        page.click("scal_sdt_gen_start")
        try:
            br.wait_for(lambda: len(list(out.glob("*.png"))) == 4 * clicks
                        and "image(s)" in page.text("scal_sdt_gen_result"), 120, f"{4 * clicks} images")
        except br.Timeout as e:
            raise br.Timeout(f"{e}: the page says {page.text('scal_sdt_gen_result')!r}; "
                             f"out {page.field('scal_sdt_gen_out').get_attribute('value')!r}") from None
        time.sleep(0.5)
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(set(names)) == 8 and names[0].startswith("00000-") and names[-1].startswith("00007-"), names
