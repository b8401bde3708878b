"""The Tagger tab in a real browser on the real WebUI (its Gradio 3.41): tag a folder with one click, then open
it in the dataset editor, filter, bulk-add a tag, step through images with the keyboard and undo.

Needs WEBUI_DIR / WEBUI_PYTHON, onnxruntime in the WebUI's Python, and Chromium + chromedriver + selenium."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from . import browser as br

REPO = Path(__file__).resolve().parents[2]
_missing = br.unavailable()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"no headless browser: {_missing}")


@pytest.fixture(scope="module")
def server(webui_server, webui_install, tiny_checkpoint):
    if subprocess.run([str(webui_install[1]), "-c", "import onnxruntime"], capture_output=True).returncode:
        pytest.skip("the WebUI's Python has no onnxruntime (our install.py adds it)")
    return webui_server(tiny_checkpoint("toy"), extensions=[REPO], name="webui-scal-sdt-toy")


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    driver = br.launch(tmp_path_factory.mktemp("chromium-profile"))
    yield br.WebUIPage(driver, server.base_url).open()
    driver.quit()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from scal_sdt.toy_world.world import make_dataset

    data = tmp_path_factory.mktemp("browser-tag")
    make_dataset(data, 10, seed=21)
    for p in data.glob("*.txt"):
        p.unlink()
    return data


def open_sub_tab(page, label):
    page.open_tab("SCAL-SDT Tagger")
    page.open_tab(label, nav="#tab_scal_sdt_tagger .tab-nav")


def gallery_count(page) -> int:
    return page.js("return document.querySelectorAll('#scal_sdt_edit_gallery img').length")


def test_tag_a_folder_with_one_click(page, folder):
    open_sub_tab(page, "Tag folder")
    page.set_value("scal_sdt_tag_dir", str(folder))
    page.set_value("scal_sdt_tag_model", "toy")
    page.open_accordion("speed", "scal_sdt_tag_tab")
    page.set_value("scal_sdt_tag_cache_dir", "")
    page.click("scal_sdt_tag_start")
    text = br.wait_for(lambda: (lambda t: t if "Done" in t else None)(page.by_id("scal_sdt_tag_result").text), 60,
                       "the tagging report")
    assert "10 caption(s) written" in text and "images/s" in text and "CPUExecutionProvider" in text
    assert len(list(folder.glob("*.txt"))) == 10
    assert page.console_errors(ours_only=True) == []


def test_edit_the_tags_in_the_editor(page, folder):
    if len(list(folder.glob("*.txt"))) < 10:
        pytest.skip("needs the tagged folder of the test before")
    open_sub_tab(page, "Edit tags")
    page.set_value("scal_sdt_edit_dir", str(folder))
    page.click("scal_sdt_edit_load")
    br.wait_for(lambda: gallery_count(page) == 10, 30, "10 thumbnails")
    assert "10 of 10 images match" in page.by_id("scal_sdt_edit_status").text
    page.set_value("scal_sdt_edit_filter", "simple background")
    page.click("scal_sdt_edit_apply_filter")
    simple = sum("simple background" in p.read_text() for p in folder.glob("*.txt"))
    br.wait_for(lambda: gallery_count(page) == simple, 30, f"{simple} thumbnails after filtering")
    page.set_value("scal_sdt_edit_tags", "plain")
    page.click("scal_sdt_edit_add_end")
    br.wait_for(lambda: "caption(s) changed" in page.by_id("scal_sdt_edit_status").text, 30, "the bulk edit")
    assert sum(p.read_text().endswith(", plain") for p in folder.glob("*.txt")) == simple
    # keyboard: n moves to the next image (focus out of text fields first)
    before = page.by_id("scal_sdt_edit_label").text
    page.js("document.activeElement.blur()")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(page.driver).send_keys("n").perform()
    br.wait_for(lambda: page.by_id("scal_sdt_edit_label").text not in ("", before), 15, "the next image")
    shots = [Path(os.environ["SCAL_SDT_SCREENSHOT_DIR"]) / "scal-sdt-editor.png"] if os.environ.get(
        "SCAL_SDT_SCREENSHOT_DIR") else []
    if shots:
        page.screenshot(*shots)
    page.click("scal_sdt_edit_undo")
    br.wait_for(lambda: "undid add plain" in page.by_id("scal_sdt_edit_status").text, 30, "undo")
    assert not any(p.read_text().endswith(", plain") for p in folder.glob("*.txt"))
    assert page.console_errors(ours_only=True) == []
