"""The "Evaluate saved steps" panel in a real browser on the real WebUI (toy checkpoint): a user trains an embedding
in the Train tab saving every 2 steps, opens the panel below the loss plot, clicks Evaluate — the report with the
suggested step and its scores (the toy CLIP's), the grid and the scores plot appear and the step to keep is filled
in — then clicks "Keep this one": the WebUI's embedding file becomes that saved step's, byte for byte. (Found here:
the Evaluate button shared its elem_id with the form's "evaluate" checkbox, so a click found the checkbox.)

Needs WEBUI_DIR / WEBUI_PYTHON and Chromium + chromedriver + selenium (see browser.py). With SCAL_SDT_SCREENSHOT_DIR
set, the screenshot after "Keep this one" is also written there (scal-sdt-evaluated.png)."""
from __future__ import annotations

import os
import re

import pytest

from . import browser as br

TAB = "scal_sdt_ti_tab"
NAME = "evalbrowser"
TIMEOUT_S = 900  # a 4-step run; 2 steps x (a picture + a leakage picture) by the WebUI txt2img: 580 s seen (busy box)

_missing = br.unavailable()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"no headless browser: {_missing}")


@pytest.fixture(scope="module")
def page(toy_server, tmp_path_factory):
    driver = br.launch(tmp_path_factory.mktemp("chromium-profile"))
    page = br.WebUIPage(driver, toy_server.base_url).open()
    yield page
    driver.quit()


def img_src(page: br.WebUIPage, elem_id: str) -> str | None:
    """The src of the loaded (naturalWidth > 0) picture in the Image component ``elem_id``."""
    return page.js("const img = document.querySelector('#' + arguments[0] + ' img');"
                   "return img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null;", elem_id)


def test_the_panel_evaluates_the_saved_steps_and_keeps_one(page, toy_server, tmp_path):
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    data = tmp_path / "pink"
    make_held_out_colour_set(data, 4, seed=5)
    page.open_tab("Train")
    page.open_tab("SCAL-SDT Embedding", nav="#tab_train .tab-nav")
    br.wait_for(lambda: page.visible(TAB), 10, "the SCAL-SDT Embedding tab visible")
    page.set_value("scal_sdt_ti_name", NAME)
    page.set_value("scal_sdt_ti_data", str(data))
    page.set_value("scal_sdt_ti_steps", 4)
    page.open_accordion("model and data", TAB)
    page.set_value("scal_sdt_ti_resolution", 64)
    page.open_accordion("output", TAB)
    page.set_value("scal_sdt_ti_save_every", 2)
    page.set_value("scal_sdt_ti_preview_every", 0)
    page.click("scal_sdt_ti_start")

    def ended():
        text = page.text("scal_sdt_ti_result")
        return text if any(w in text for w in (" finished at step ", " interrupted at step ", "Error")) else None

    shots = [tmp_path / "scal-sdt-evaluated.png"]
    if os.environ.get("SCAL_SDT_SCREENSHOT_DIR"):
        shots.append(os.path.join(os.environ["SCAL_SDT_SCREENSHOT_DIR"], "scal-sdt-evaluated.png"))
    try:
        result = br.wait_for(ended, TIMEOUT_S, "the training's result")
        assert "finished at step 4" in result, f"{result}\n{toy_server.log_tail()}"

        # the panel, below the loss plot
        above = page.by_id("scal_sdt_ti_plot").location["y"]
        page.open_accordion("Evaluate saved steps", TAB)
        assert page.by_id("scal_sdt_ti_evaluate_group").location["y"] > above
        page.set_value("scal_sdt_ti_evaluate_prompts", "a large [name] star on a white background")
        page.set_value("scal_sdt_ti_evaluate_images", 1)
        page.set_value("scal_sdt_ti_evaluate_clip", "toy")  # the toy checkpoint's CLIP (the family's is SD1's)
        page.click("scal_sdt_ti_evaluate_start")
        report = br.wait_for(lambda: (lambda t: t if "Suggested: step" in t or "rror" in t else None)(
            page.text("scal_sdt_ti_evaluate_report")), TIMEOUT_S, "the evaluation's report")
        suggested = re.search(r"Suggested: step (\d+)", report)
        assert suggested, f"{report}\n{toy_server.log_tail()}"
        step = int(suggested.group(1))
        assert step in (2, 4), report
        # the scores, measured with the toy CLIP; prompt match needs two prompts and says so
        assert "fidelity" in report and "leakage" in report, report
        assert "prompt match skipped" in report and "give two or more" in report, report
        assert "the highest fidelity" in report, report
        # the grid and the plot are pictures the browser loaded; the step to keep is the suggested one
        assert br.wait_for(lambda: img_src(page, "scal_sdt_ti_evaluate_grid"), 30, "the grid")
        assert br.wait_for(lambda: img_src(page, "scal_sdt_ti_evaluate_plot"), 30, "the scores plot")
        assert page.field("scal_sdt_ti_keep_step").get_attribute("value") == str(step)

        # keep the other step than the suggested one (the final file is the last step's already)
        other = 2
        page.set_value("scal_sdt_ti_keep_step", other)
        page.click("scal_sdt_ti_keep")
        kept = br.wait_for(lambda: (lambda t: t if "kept step" in t or "rror" in t else None)(
            page.text("scal_sdt_ti_evaluate_report")), 60, "the kept step's message")
        final = toy_server.data_dir / "embeddings" / f"{NAME}.safetensors"
        assert f"kept step {other} as" in kept and str(final) in kept, kept
        run_dir = toy_server.data_dir / "textual_inversion" / "scal-sdt" / NAME
        saved = run_dir / "embeddings" / f"{NAME}-{other}.safetensors"
        assert final.read_bytes() == saved.read_bytes()
    finally:
        page.screenshot(*shots)
    assert page.console_errors(ours_only=True) == []
