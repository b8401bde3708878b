"""The aesthetic-gradients accordion in a real browser on the real WebUI: "read generation parameters" (the paste
button) fills it from an image's infotext, and picking an embedding shows the thumbnail of its images.

Needs WEBUI_DIR / WEBUI_PYTHON and Chromium + chromedriver + selenium (see browser.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from . import browser as br

REPO = Path(__file__).resolve().parents[2]
ID = "script_txt2img_scalsdt_aesthetic_gradients_"
_missing = br.unavailable()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"no headless browser: {_missing}")


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint, tmp_path_factory):
    from scal_sdt.toy_world.world import Scene, render

    server = webui_server(tiny_checkpoint("toy"), extensions=[REPO], name="webui-scal-sdt-toy")
    folder = tmp_path_factory.mktemp("pinks")
    for i, shape in enumerate(["circle", "star"]):
        render(Scene(shape, "red", "white", "large", (0.5, 0.5))).save(folder / f"{i}.png")
    job = server.wait_job(server.post("/scal-sdt/v1/aesthetic-embedding",
                                      {"images": str(folder), "name": "pinks", "clip": "toy", "overwrite": True}))
    assert job["status"] == "finished", job
    return server


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    driver = br.launch(tmp_path_factory.mktemp("chromium-profile"))
    yield br.WebUIPage(driver, server.base_url).open()
    driver.quit()


def test_paste_fills_the_accordion_and_the_picker_shows_the_thumbnail(page):
    infotext = ("a blue star\nSteps: 8, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Aesthetic LR: 0.001, "
                "Aesthetic weight: 0.35, Aesthetic steps: 7, Aesthetic embedding: pinks, Aesthetic slerp: True, "
                "Aesthetic text: watercolor, Aesthetic text negative: True, Aesthetic slerp angle: 0.3, "
                "Aesthetic batch-wise: False")
    page.open_accordion("SCAL-SDT aesthetic gradients", "txt2img_script_container")
    page.js("const t = arguments[0]; t.value = arguments[1]; t.dispatchEvent(new Event('input', {bubbles: true}));",
            page.field("txt2img_prompt"), infotext)
    paste = page.css("#txt2img_tools #paste")[0]
    page.js("arguments[0].scrollIntoView({block: 'center'})", paste)
    paste.click()
    br.wait_for(lambda: page.field(ID + "weight").get_attribute("value") == "0.35", 15, "the weight pasted")
    assert page.field(ID + "steps").get_attribute("value") == "7"
    assert page.field(ID + "text").get_attribute("value") == "watercolor"
    assert page.field(ID + "enabled").is_selected()
    assert page.field(ID + "slerp").is_selected() and not page.field(ID + "batchwise").is_selected()
    assert page.field(ID + "embedding").get_attribute("value") == "pinks"
    br.wait_for(lambda: page.css(f"#{ID}thumb img"), 15, "the embedding's thumbnail")
