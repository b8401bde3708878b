"""The SCAL-SDT Library tab in the real WebUI, clicked in a headless Chromium as a user would: it lists the
embedding, hypernetwork and LoRA we trained through the API with their fit to the loaded model; the A/B previews are
rendered by the WebUI's own sampler, then come from the cache; "Use" puts the embedding's name and ``<lora:NAME:1>``
into txt2img's prompt and the hypernetwork into Settings → SCAL-SDT, and one generation uses all three. An aesthetic
embedding's preview goes through txt2img's aesthetic code; a checkpoint's waits for its tick, then swaps the WebUI's
model for the picture and loads the previous one back.

Needs WEBUI_DIR / WEBUI_PYTHON (see conftest.py) and Chromium + chromedriver + selenium (see browser.py)."""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from . import browser as br

REPO = Path(__file__).resolve().parents[2]
TAB = "tab_scal_sdt_library"
NAMES = {"embedding": "libstar", "hypernetwork": "libhn", "lora": "liblora"}
RENDER_TIMEOUT_S = 400  # a click -> its previews: 2-3 images of 64 px, 3 steps (about 50 s each on a busy 2-CPU box)


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("tiny-sd1"), extensions=[REPO], name="webui-scal-sdt")


def test_the_library_tab_is_on_the_page_and_use_is_wired(server):
    config = server.get("/config")
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    for part in ("folders", "table", "item", "render", "gallery", "search", "kind", "fits_only"):
        assert f"scal_sdt_lib_{part}" in by_id, part
    assert by_id["scal_sdt_lib_use"]["props"].get("visible", True) is True
    # Gradio 3.41 (the WebUI's) takes plain strings as a dropdown's choices, no (label, value) pairs
    assert all(isinstance(c, str) for c in by_id["scal_sdt_lib_item"]["props"].get("choices", []))


# ------------------------------------------------------------------------------------------------ in a browser
needs_browser = pytest.mark.skipif(br.unavailable() is not None, reason=f"no headless browser: {br.unavailable()}")


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory) -> dict[str, Path]:
    """An embedding, a hypernetwork and a LoRA trained on the loaded model through our API (a few steps, 64 px),
    each written into the WebUI's own folder after the page was built."""
    from scal_sdt.demo_data import make_concept_folder

    data = make_concept_folder(tmp_path_factory.mktemp("lib-data") / "stars", count=4)
    common = {"resolution": 64, "preview_every": 0}
    bodies = {"embedding": {"name": NAMES["embedding"], "data": str(data), "steps": 4, "save_every": 0},
              "hypernetwork": {"name": NAMES["hypernetwork"], "data": str(data), "steps": 2, "lr": "1e-4",
                               "save_every": 0},
              "lora": {"name": NAMES["lora"], "instance_data": str(data), "instance_prompt": "a photo of sks",
                       "steps": 2, "rank": 4, "alpha": 4, "lr": "1e-2", "overwrite": True}}
    files = {}
    for kind, body in bodies.items():
        job = server.wait_job(server.post(f"/scal-sdt/v1/train/{kind}", {**common, **body}), timeout=300)
        assert job["status"] == "finished", job
        files[kind] = Path(job["result"]["path"])
    return files


@pytest.fixture(scope="module")
def page(server, trained, tmp_path_factory):
    driver = br.launch(tmp_path_factory.mktemp("chromium-profile"))
    page = br.WebUIPage(driver, server.base_url).open()
    yield page
    driver.quit()
    server.post("/sdapi/v1/options", {"scal_sdt_hypernetwork": "None"})  # the server is shared with other tests


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lib-cache")


def result_text(page, contains: str, timeout: float = 60) -> str:
    return br.wait_for(lambda: (lambda t: t if contains in t else None)(page.text("scal_sdt_lib_result")), timeout,
                       f"the library's message to say {contains!r}")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def gallery_count(page) -> int:
    return page.js("return document.querySelectorAll('#scal_sdt_lib_gallery img').length")


def table_rows(page) -> dict[str, list[str]]:
    return {r[0]: r for r in page.js("return [...document.querySelectorAll('#scal_sdt_lib_table tbody tr')]"
                                     ".map(tr => [...tr.querySelectorAll('td')].map(td => td.innerText.trim()))")
            if r and r[0]}


def open_library(page, cache: Path) -> None:
    """The Library tab with the previews at 64 px, 3 steps, cached in ``cache``; the list filled (once a page load:
    a second refresh would reset the picked item under a later click)."""
    page.open_tab("SCAL-SDT Library")
    if page.field("scal_sdt_lib_cache").get_attribute("value") != str(cache):
        page.open_accordion("previews", TAB)
        page.set_value("scal_sdt_lib_size", 64)
        page.set_value("scal_sdt_lib_steps", 3)
        page.set_value("scal_sdt_lib_cache", str(cache))
    if not table_rows(page):
        page.click("scal_sdt_lib_refresh")
        result_text(page, "item(s)")
        first = br.wait_for(lambda: next(iter(table_rows(page))), 20, "the table's rows")
        # the first item's details, from the refresh's pick: Gradio 3.41 drops a change event that comes while the
        # same event is still running, so a pick before these arrive would show nothing new
        br.wait_for(lambda: f"{first} — " in page.text("scal_sdt_lib_details"), 60, "the first item's details")


@needs_browser
def test_the_list_shows_our_trained_files_with_their_fit(page, trained, cache):
    page.open_tab("SCAL-SDT Library")
    folders = page.field("scal_sdt_lib_folders").get_attribute("value").splitlines()
    # read when the page loads: the embeddings folder was made by the first training, after start-up
    for path in trained.values():
        assert str(path.parent) in folders, (path, folders)
    open_library(page, cache)
    rows = table_rows(page)
    for kind, name in NAMES.items():
        assert rows[name][1] == kind and rows[name][3] == "fits", rows[name]
    assert rows["tiny-sd1"][1] == "checkpoint" and "switch to it" in rows["tiny-sd1"][3]
    page.choose("scal_sdt_lib_item", f"{NAMES['lora']} (lora)")
    br.wait_for(lambda: f"{NAMES['lora']} — lora" in page.text("scal_sdt_lib_details"), 20, "the LoRA's details")
    assert "fits the loaded model" in page.text("scal_sdt_lib_details")
    assert '"rank": 4' in page.text("scal_sdt_lib_details")
    assert page.console_errors(ours_only=True) == []


@needs_browser
def test_ab_previews_are_rendered_by_the_webui_then_come_from_the_cache(page, trained, cache):
    open_library(page, cache)
    page.choose("scal_sdt_lib_item", f"{NAMES['embedding']} (embedding)")
    t0 = time.monotonic()
    page.click("scal_sdt_lib_render")
    assert "rendered 2 image(s)" in result_text(page, f"{NAMES['embedding']}:", RENDER_TIMEOUT_S)
    print(f"embedding previews: {time.monotonic() - t0:.1f} s")
    br.wait_for(lambda: gallery_count(page) == 2, 20, "two pictures: without, with")
    pngs = sorted(cache.rglob("*.png"), key=lambda p: p.parent.name == "without")
    assert len(pngs) == 2 and pngs[1].parent.name == "without"
    with_, without = map(pixels, pngs)
    assert with_.shape == (64, 64, 3) and np.abs(with_ - without).max() > 0  # the embedding changes the picture
    t0 = time.monotonic()
    page.click("scal_sdt_lib_render")
    assert "all from the cache" in result_text(page, "all from the cache", 60)
    assert time.monotonic() - t0 < 30 and len(list(cache.rglob("*.png"))) == 2
    # a LoRA at 0.5 and 1: "without" is the embedding's, from the cache; two new pictures
    page.choose("scal_sdt_lib_item", f"{NAMES['lora']} (lora)")
    page.click("scal_sdt_lib_render")
    assert "rendered 2 image(s)" in result_text(page, f"{NAMES['lora']}:", RENDER_TIMEOUT_S)
    br.wait_for(lambda: gallery_count(page) == 3, 20, "three pictures: without, with 0.5, with 1")
    assert len(list(cache.rglob("*.png"))) == 4
    assert page.console_errors(ours_only=True) == []


def generate(page, wait_for_text: str) -> str:
    """Click txt2img's Generate (64 px, 3 steps, seed 1) and return the infotext once it says ``wait_for_text``.

    The size, steps and seed go in as a user pastes parameters (a last prompt line of "Key: value" pairs, then the
    paste button ↙), not typed into the sliders: every release of txt2img's width or height slider runs the WebUI's
    own hires-fix preview, a JavaScript-only event (``onCalcResolutionHires``) with no outputs that returns its six
    inputs, and Gradio 3.41 then throws "Cannot read properties of undefined (reading 'props')" in Blocks-*.js —
    the WebUI's error, which would hide ours. The line names the server's emphasis: a pasted line without one means
    "Original" to the WebUI (an override, and NaNs from the tiny text encoder: see conftest.DEFAULT_SETTINGS)."""
    page.open_tab("txt2img")
    prompt = page.field("txt2img_prompt").get_attribute("value")
    page.set_value("txt2img_prompt", f"{prompt}\nSteps: 3, Size: 64x64, Seed: 1, Emphasis: No norm")
    page.css("#txt2img_tools #paste")[0].click()  # (img2img's paste button has the same id)
    br.wait_for(lambda: [page.field(f"txt2img_{n}").get_attribute("value") for n in ("width", "height", "steps")]
                == ["64", "64", "3"] and page.field("txt2img_prompt").get_attribute("value") == prompt, 20,
                "the pasted size and steps, the prompt as it was")
    # (the infotext is not cleared by hand first: Gradio's HTML component then no longer renders the new value)
    page.click("txt2img_generate")

    def ended():  # the infotext, or the WebUI's error message (not a wait to the timeout)
        error = page.js("return document.querySelector('#html_log_txt2img .error')?.textContent || ''")
        info = page.text("html_info_txt2img")
        return ("failed", error) if error else ("done", info) if wait_for_text in info and "Steps: 3" in info else None

    outcome, text = br.wait_for(ended, RENDER_TIMEOUT_S, f"the infotext with {wait_for_text!r}")
    assert outcome == "done", f"the WebUI's generation failed: {text}"
    return text


@needs_browser
def test_use_puts_each_into_txt2img_and_a_generation_applies_them(page, server, trained, cache):
    open_library(page, cache)
    page.open_tab("txt2img")
    page.set_value("txt2img_prompt", "a picture")
    for kind in ("embedding", "lora"):
        page.open_tab("SCAL-SDT Library")
        page.choose("scal_sdt_lib_item", f"{NAMES[kind]} ({kind})")
        page.click("scal_sdt_lib_use")
        # "use" switches to txt2img
        br.wait_for(lambda: any(b.text.strip() == "txt2img" for b in page.css("#tabs > .tab-nav > button.selected")),
                    20, "txt2img selected")
    prompt = page.field("txt2img_prompt").get_attribute("value")
    assert prompt == f"a picture, {NAMES['embedding']}, <lora:{NAMES['lora']}:1>", prompt
    page.open_tab("SCAL-SDT Library")
    page.choose("scal_sdt_lib_item", f"{NAMES['hypernetwork']} (hypernetwork)")
    page.click("scal_sdt_lib_use")
    # (GET /sdapi/v1/options does not show an extension's option in v1.8.0: its response model is built before
    # the extensions add theirs; the generation's infotext below is the proof)
    br.wait_for(lambda: f"{NAMES['hypernetwork']} is applied to every generation" in page.js(
        "return document.querySelector('#scal_sdt_lib_result').textContent"), 60,
        "Settings → SCAL-SDT: the hypernetwork")
    assert page.field("txt2img_prompt").get_attribute("value") == prompt  # the prompt is left as it was
    info = generate(page, f"Hypernet: {NAMES['hypernetwork']}")
    assert f"{NAMES['embedding']}:" in info.split("TI hashes:", 1)[1], info  # the WebUI used the embedding
    assert f"{NAMES['lora']}:" in info.split("Lora hashes:", 1)[1], info  # and its Lora extension the LoRA
    assert page.js("return document.querySelectorAll('#txt2img_gallery img').length") >= 1
    assert page.console_errors(ours_only=True) == []


@pytest.fixture(scope="module")
def more_files(server, tiny_checkpoint) -> dict[str, Path]:
    """A second checkpoint (tiny-sd1 with other UNet weights, with its yaml and text encoder) in the WebUI's
    checkpoint folder, and an aesthetic embedding for tiny-sd1's text encoder (a CLIP-space row and its text
    projection, as ours are stored) in its aesthetic_embeddings folder."""
    import torch
    from scal_sdt.files import save_safetensors
    from scal_sdt.host.checkpoint import save_checkpoint
    from scal_sdt.host.standalone import load_components

    other = load_components("tiny-sd1")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ckpt = save_checkpoint(other, tiny_checkpoint.folder / "libother.safetensors")
    width = other.text_encoders[0].config.hidden_size
    g = torch.Generator().manual_seed(0)
    row = torch.randn(1, 24, generator=g)
    folder = server.data_dir / "models" / "aesthetic_embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    look = save_safetensors({"clip_l": row / row.norm(), "clip_l.text_projection": torch.randn(width, 24, generator=g)},
                            folder / "liblook.safetensors", metadata={"trainer": "scal-sdt aesthetic embedding"})
    return {"checkpoint": Path(ckpt), "aesthetic-embedding": look}


def cached_pictures(cache: Path, file: Path) -> list[Path]:
    return sorted((cache / hashlib.sha256(file.read_bytes()).hexdigest()[:24]).glob("*.png"))


@needs_browser
def test_aesthetic_and_checkpoint_previews_in_the_webui(page, server, more_files, cache):
    page.open()  # the page reads the folders at load: aesthetic_embeddings is new
    open_library(page, cache)
    page.set_value("scal_sdt_lib_aesthetic_weight", 0.5)
    page.set_value("scal_sdt_lib_aesthetic_steps", 10)
    page.set_value("scal_sdt_lib_aesthetic_lr", 0.001)
    page.choose("scal_sdt_lib_item", "liblook (aesthetic-embedding)")
    page.click("scal_sdt_lib_render")
    assert re.search(r"rendered [12] image", result_text(page, "liblook: ", RENDER_TIMEOUT_S))
    without = sorted((cache / "without").glob("*.png"))
    assert len(without) == 1 and len(cached_pictures(cache, more_files["aesthetic-embedding"])) == 1
    assert np.abs(pixels(without[0]) - pixels(cached_pictures(cache, more_files["aesthetic-embedding"])[0])).max() > 0
    page.click("scal_sdt_lib_render")
    result_text(page, "liblook: all from the cache", 60)

    page.choose("scal_sdt_lib_item", "libother (checkpoint)")
    page.click("scal_sdt_lib_render")
    result_text(page, "tick 'checkpoint previews'")  # a checkpoint's preview swaps the model: only when asked
    page.click_checkbox("scal_sdt_lib_checkpoint_previews")
    loaded = {k: server.get("/sdapi/v1/options")[k] for k in ("sd_model_checkpoint", "sd_checkpoint_hash")}
    t0 = time.monotonic()
    page.click("scal_sdt_lib_render")
    assert "rendered 1 image(s)" in result_text(page, "libother: rendered", RENDER_TIMEOUT_S)  # "without": cached
    print(f"checkpoint preview (two model loads): {time.monotonic() - t0:.1f} s")
    theirs = cached_pictures(cache, more_files["checkpoint"])
    assert len(theirs) == 1 and np.abs(pixels(theirs[0]) - pixels(without[0])).max() > 0
    assert loaded["sd_model_checkpoint"].startswith("tiny-sd1")
    assert {k: server.get("/sdapi/v1/options")[k] for k in loaded} == loaded  # the model of before, loaded back
    # the WebUI loaded libother's weights, then tiny-sd1's again (the option alone would also be right after a failed
    # load back)
    loads = re.findall(r"^Loading weights \[\w+\] from .*/([^/]+)\.safetensors$", server.log, re.M)
    assert loads[-2:] == ["libother", "tiny-sd1"], loads
    page.click("scal_sdt_lib_render")
    result_text(page, "libother: all from the cache", 60)
    assert page.console_errors(ours_only=True) == []
