"""The extension inside the real reForge (Panchovix/stable-diffusion-webui-reForge), offline on the CPU: an A1111 line on
a Forge-style backend (``ldm_patched``) that keeps the Train tab. Its model is an ldm one whose text encoders are the
WebUI's own hijacked ones and whose UNet and VAE are its backend's, so every trainer runs in place on the loaded
model, as in A1111 (no trainable copy): an embedding, an APT pair, a hypernetwork, a LoRA and a DreamBooth
checkpoint trained through our API are each used in reForge's txt2img (by name, ``<hypernet:…>`` and the Settings
picker — applied by us, since reForge's backend no longer applies hypernetworks —, ``<lora:…>``, the checkpoint
list); the aesthetic accordion tunes its text encoder; the tagger tags a folder.

Needs ``REFORGE_DIR`` (a reForge folder with launch.py and its repositories/) and ``REFORGE_PYTHON`` (its venv's
python); skipped otherwise. reForge detects the model family from a real checkpoint's shapes, so this runs on a
full-size SD1 checkpoint with random weights (2 GB; written once, or taken from ``REFORGE_CKPT`` when that file
exists).

    REFORGE_DIR=/work/reforge REFORGE_PYTHON=/work/reforge-venv/bin/python python -m pytest tests/webui/test_in_reforge.py
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from .conftest import MODEL_TIMEOUT_S, WebUIError, start_webui

REPO = Path(__file__).resolve().parents[1].parent
REFORGE_ARGS = ("--always-cpu", "--use-cpu", "all", "--skip-torch-cuda-test", "--skip-prepare-environment",
                "--skip-install", "--skip-python-version-check", "--no-download-sd-model", "--do-not-download-clip",
                "--server-name", "127.0.0.1", "--api")
PROMPT = "a red star on a white background"
AESTHETIC = "scal-sdt aesthetic gradients"
DREAMBOOTH_GIB = 4  # what DreamBooth with the 8gb preset may add to reForge's resident memory at its peak


def full_size_sd1(tmp_path_factory) -> Path:
    ckpt = Path(os.environ["REFORGE_CKPT"]) if os.environ.get("REFORGE_CKPT") else None
    if ckpt is not None and ckpt.is_file():
        return ckpt
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from apt_memory import build

    from scal_sdt.host.checkpoint import save_checkpoint

    target = ckpt or tmp_path_factory.mktemp("reforge-models") / "realsd1.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(build("real-sd1"), target, dtype=torch.float16)


@pytest.fixture(scope="module")
def reforge(tmp_path_factory):
    reforge_dir, python = os.environ.get("REFORGE_DIR"), os.environ.get("REFORGE_PYTHON")
    if not reforge_dir or not python:
        pytest.skip("set REFORGE_DIR and REFORGE_PYTHON to run the tests inside the real reForge")
    ckpt = full_size_sd1(tmp_path_factory)
    server = start_webui(Path(reforge_dir), Path(python), tmp_path_factory.mktemp("reforge"), ckpt.parent, ckpt,
                         extensions=[REPO], base_args=REFORGE_ARGS, wait_model=False)
    try:
        wait_model(server)
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


def wait_model(server, timeout: float = 2 * MODEL_TIMEOUT_S) -> None:
    """reForge says "Model NAME [HASH] loaded in …" (A1111: "Model loaded in …")."""
    deadline = time.monotonic() + timeout
    while not re.search(rf"Model {re.escape(server.ckpt.name)} \[\w+\] loaded in", server.log):
        if not server.alive() or "Stable diffusion model failed to load" in server.log:
            raise WebUIError(f"reForge did not load {server.ckpt}; log tail:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise WebUIError(f"reForge did not load the model in {timeout} s; log tail:\n{server.log_tail()}")
        time.sleep(0.5)


def images(root: Path, n: int = 4, seed: int = 3) -> Path:
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    make_held_out_colour_set(root, n, seed=seed)
    return root


def pixels(server, prompt: str = PROMPT, **payload) -> tuple[str, dict]:
    from PIL import Image

    shots, info = server.txt2img(prompt=prompt, seed=5, steps=2, **payload)
    with Image.open(io.BytesIO(shots[0])) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest(), info


def train(server, kind: str, timeout: float = 900, **options) -> dict:
    options = {"steps": 2, "resolution": 64, "preview_every": 0, "save_every": 0, **options}
    job = server.wait_job(server.post(f"/scal-sdt/v1/train/{kind}", options), timeout=timeout)
    assert job["status"] == "finished", (job, server.log_tail())
    return job


def test_our_sub_tabs_are_in_reforges_train_tab_once(reforge):
    """reForge builds the Train tab and calls on_ui_train_tabs: no extra top-level tab, no duplicate ids."""
    from scal_sdt.textual_inversion.config import EmbeddingConfig

    ids = [c.get("props", {}).get("elem_id") for c in reforge.get("/config")["components"]]
    for prefix in ("scal_sdt_ti", "scal_sdt_hn", "scal_sdt_db", "scal_sdt_lora"):
        assert ids.count(f"{prefix}_start") == 1, prefix
    assert "scal_sdt_train" not in ids and "tab_scal_sdt_train" not in ids
    assert "scal_sdt_ti_use_txt2img" in ids  # previews from txt2img's settings: the Train tab gave its parameters
    for f in dataclasses.fields(EmbeddingConfig):
        if f.name not in ("model", "device", "memory_mode"):
            assert f"scal_sdt_ti_{f.name}" in ids, f.name


@pytest.fixture(scope="module")
def reforge_page(reforge, tmp_path_factory):
    """reForge's page in a headless Chromium (see browser.py); skipped without one."""
    from . import browser as br

    if (missing := br.unavailable()) is not None:
        pytest.skip(f"no headless browser: {missing}")
    driver = br.launch(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield br.WebUIPage(driver, reforge.base_url).open(timeout=120)
    finally:
        driver.quit()


def test_a_user_trains_an_embedding_from_reforges_train_tab(reforge_page, reforge, tmp_path):
    """Clicked as a user would: Train, then our sub-tabs (all four there), the embedding form filled and started;
    reForge's progress bar comes and goes, the result, the loss plot, and the embedding in reForge's list."""
    from . import browser as br
    from .test_browser import fill_and_start, img_src, progress_bar_gone, screenshot_paths, wait_result

    page = reforge_page
    page.open_tab("Train")
    labels = [b.text.strip() for b in page.css("#tab_train .tab-nav > button")]
    assert [label for label in labels if label.startswith("SCAL-SDT")][:4] == [
        "SCAL-SDT Embedding", "SCAL-SDT Hypernetwork", "SCAL-SDT DreamBooth", "SCAL-SDT LoRA"], labels
    for label, tab in (("SCAL-SDT DreamBooth", "scal_sdt_db_tab"), ("SCAL-SDT LoRA", "scal_sdt_lora_tab")):
        page.open_tab(label, nav="#tab_train .tab-nav")
        br.wait_for(lambda: page.visible(tab), 10, f"{label} visible")
    t0 = time.monotonic()
    fill_and_start(page, "rfbrowser", images(tmp_path / "data"), steps=8)
    try:
        result = wait_result(page, reforge, timeout=900)
        assert "rfbrowser" in result and "finished at step 8" in result, f"{result}\n{reforge.log_tail()}"
        print(f"reForge's Train tab: click -> result {time.monotonic() - t0:.1f} s: {result!r}")
        assert br.wait_for(lambda: img_src(page, "scal_sdt_ti_plot"), 10, "the loss plot")
        seen = progress_bar_gone(page)
        assert seen["bar"], seen  # reForge's own progress bar ran for our job
    finally:
        page.screenshot(*screenshot_paths(tmp_path, "reforge-train-tab.png"))
    assert page.console_errors(ours_only=True) == []
    assert "rfbrowser" in reforge.get("/sdapi/v1/embeddings")["loaded"]


def test_an_embedding_trained_in_place_is_used_by_name(reforge, tmp_path):
    before, _ = pixels(reforge, "a photo of rfpink")
    train(reforge, "embedding", name="rfpink", data=str(images(tmp_path / "data")), lr="0.05")
    assert "trainable copy" not in reforge.log  # reForge's own model, trained in place
    assert (reforge.data_dir / "embeddings" / "rfpink.safetensors").exists()
    assert "rfpink" in reforge.get("/sdapi/v1/embeddings")["loaded"]
    after, info = pixels(reforge, "a photo of rfpink")
    assert after != before and "rfpink" in info["infotexts"][0]  # TI hashes name it


def test_an_apt_pair_acts_through_the_negative_prompt(reforge, tmp_path):
    train(reforge, "embedding", name="rfapt", data=str(images(tmp_path / "data")), mode="apt", neg_vectors=2,
          lr="0.05", template="filewords", rec_weight=0.5, rec_crop=4)
    loaded = reforge.get("/sdapi/v1/embeddings")["loaded"]
    assert {"rfapt", "rfapt-neg"} <= set(loaded) and loaded["rfapt-neg"]["vectors"] == 2
    plain, _ = pixels(reforge, "a photo of rfapt", cfg_scale=5)
    assert pixels(reforge, "a photo of rfapt", negative_prompt="rfapt-neg", cfg_scale=5)[0] != plain


@pytest.fixture(scope="module")
def our_hypernetwork(reforge):
    """A random hypernetwork strong enough to see, in reForge's folder."""
    from scal_sdt.hypernetwork.format import save_hypernetwork
    from scal_sdt.hypernetwork.module import create_hypernetwork

    folder = reforge.data_dir / "models" / "hypernetworks"
    folder.mkdir(parents=True, exist_ok=True)
    hn = create_hypernetwork("rfours", [768, 320, 640, 1280], structure="1, 2, 1", activation="relu",
                             weight_init="XavierNormal", seed=4)
    save_hypernetwork(hn, folder / "rfours.pt")
    assert "rfours.pt" in reforge.get("/scal-sdt/v1/hypernetworks")["files"]
    return "rfours"


def test_hypernetworks_apply_on_reforges_backend(reforge, our_hypernetwork):
    """reForge loads <hypernet:…> but its backend no longer applies it: our attention patches do, at the strength
    given (0 = the plain image), and the Settings picker adds it to every generation."""
    reforge.post("/sdapi/v1/options", {"scal_sdt_hypernetwork": "None"})
    plain, _ = pixels(reforge)
    tagged, _ = pixels(reforge, PROMPT + " <hypernet:rfours:1>")
    assert tagged != plain, reforge.log_tail()
    assert pixels(reforge, PROMPT + " <hypernet:rfours:0>")[0] == plain
    reforge.post("/sdapi/v1/options", {"scal_sdt_hypernetwork": "rfours", "scal_sdt_hypernetwork_strength": 1.0})
    try:
        picked, info = pixels(reforge)
        assert picked == tagged and "Hypernet: rfours" in info["infotexts"][0]
    finally:
        reforge.post("/sdapi/v1/options", {"scal_sdt_hypernetwork": "None"})
    assert pixels(reforge)[0] == plain


def test_a_hypernetwork_trained_in_place_is_listed_and_applied(reforge, tmp_path):
    train(reforge, "hypernetwork", name="rftrained", data=str(images(tmp_path / "data")), lr="0.01")
    assert "rftrained" in {h["name"] for h in reforge.get("/sdapi/v1/hypernetworks")}
    plain, _ = pixels(reforge)
    assert pixels(reforge, PROMPT + " <hypernet:rftrained:1>")[0] != plain


def test_checkpointing_recomputes_reforges_blocks(reforge, tmp_path):
    """reForge's transformer blocks have no ldm ``_forward``: they are checkpointed by their own ``forward`` (before,
    only its residual blocks were; recomputation giving the same gradients is unit-tested on stand-ins in
    tests/test_webui_versions.py). Here: a hypernetwork run with checkpointing trains (a run one step shorter ends
    elsewhere). Two identical runs in reForge do not end in identical weights (max difference 0.04 after 2 steps at
    lr 0.01, with or without checkpointing), so the weights are not compared across runs."""
    import torch

    data = str(images(tmp_path / "data"))

    def weights(name: str, **options) -> list[torch.Tensor]:
        job = train(reforge, "hypernetwork", name=name, data=data, lr="0.01", seed=7, gradient_checkpointing=True,
                    **options)
        saved = torch.load(job["result"]["path"], map_location="cpu", weights_only=True)
        return [t for width in (768, 320, 640, 1280) for layer in saved[width] for t in layer.values()]

    recomputed, shorter = weights("rfckpt2"), weights("rfckpt1", steps=1)
    assert len(recomputed) == len(shorter) > 0 and all(torch.isfinite(t).all() for t in recomputed)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(recomputed, shorter))


def test_a_lora_trained_in_place_is_applied_by_reforges_lora(reforge, tmp_path):
    plain, _ = pixels(reforge)
    train(reforge, "lora", name="rflora", instance_data=str(images(tmp_path / "inst")), rank=4, alpha=4,
          instance_prompt="a photo of sks [filewords]", lr="1e-2", overwrite=True)
    assert (reforge.data_dir / "models" / "Lora" / "rflora.safetensors").exists()
    assert pixels(reforge)[0] == plain  # the loaded model is as it was
    assert pixels(reforge, PROMPT + " <lora:rflora:1>")[0] != plain
    assert pixels(reforge, PROMPT + " <lora:rflora:0>")[0] == plain


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2 ** 20


def peak_rss_gib(pid: int, reset: bool = False) -> float:
    """The process's peak resident memory (VmHWM); ``reset`` starts a new peak from now (clear_refs 5)."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 2 ** 20


def test_dreambooth_with_the_8gb_preset_fits_beside_reforges_model(reforge, tmp_path, request):
    """The full-size UNet fine-tuned in place (fp32 weights: a CPU WebUI computes in fp32) with the preset an 8 GB
    user picks: Adafactor stepped in the backward pass, checkpointing, prompts encoded once. Nothing is copied in
    RAM: the weights to put back are kept in a file in the run folder, the checkpoint is written a tensor at a time.
    Afterwards reForge's model gives the plain image again, and the new checkpoint, picked in txt2img, another."""
    from safetensors import safe_open

    if available_gib() < DREAMBOOTH_GIB:
        pytest.skip(f"DreamBooth on a full-size SD1 inside reForge needs about {DREAMBOOTH_GIB} GiB free besides "
                    f"reForge (this box has {available_gib():.1f} GiB free)")
    plain, _ = pixels(reforge)
    pid = reforge.process.pid
    before = peak_rss_gib(pid, reset=True)
    # the run's folder goes too: its resume checkpoint holds the UNet and the optimizer's state (5 GB)
    request.addfinalizer(lambda: [shutil.rmtree(d) for d in reforge.data_dir.glob("*/scal-sdt/rfdb")])
    job = train(reforge, "dreambooth", name="rfdb", instance_data=str(images(tmp_path / "inst", 2)),
                instance_prompt="a photo of sks", steps=1, lr="1e-3", preset="8gb", overwrite=True)
    added = peak_rss_gib(pid) - before
    print(f"DreamBooth (8gb preset, SD1, 64 px) raised reForge's resident memory by {added:.2f} GiB at its peak")
    assert "preset 8gb for sd1" in reforge.log and "optimizer adafactor stepped in the backward pass" in reforge.log
    assert added < DREAMBOOTH_GIB, added
    trained = Path(job["result"]["path"])
    request.addfinalizer(lambda: [p.unlink(missing_ok=True) for p in trained.parent.glob("rfdb.*")])
    keys = []
    for path in (reforge.ckpt, trained):
        with safe_open(str(path), framework="pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1]
    assert pixels(reforge)[0] == plain  # reForge's model is put back as it was loaded
    reforge.post("/sdapi/v1/refresh-checkpoints")
    assert "rfdb" in {m["model_name"] for m in reforge.get("/sdapi/v1/sd-models")}
    tuned, info = pixels(reforge, override_settings={"sd_model_checkpoint": "rfdb"})
    assert tuned != plain and "rfdb" in info["infotexts"][0], info["infotexts"][0]
    assert pixels(reforge)[0] == plain  # the loaded model again after the override


def test_aesthetic_gradients_tune_reforges_text_encoder(reforge):
    """An aesthetic embedding that carries its text projection (so no CLIP download): the accordion changes the
    image, weight 0 gives the plain one."""
    import torch

    from scal_sdt.files import save_safetensors

    folder = reforge.data_dir / "models" / "aesthetic_embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_safetensors({"clip_l": torch.randn(1, 768), "clip_l.text_projection": torch.randn(768, 768) / 28},
                     folder / "rfae.safetensors")

    def args(weight):
        return {AESTHETIC: {"args": [True, "rfae", weight, 2, 1e-3, False, 0.1, "", False, True, "None", 1.0]}}

    plain, _ = pixels(reforge)
    tuned, info = pixels(reforge, alwayson_scripts=args(0.5))
    assert "aesthetic gradients not applied" not in reforge.log, reforge.log_tail()
    assert tuned != plain and "rfae" in info["infotexts"][0]
    assert pixels(reforge, alwayson_scripts=args(0.0))[0] == plain


def test_the_tagger_tags_a_folder(reforge, tmp_path):
    from scal_sdt.toy_world.world import Scene, render

    folder = tmp_path / "tagme"
    folder.mkdir()
    for i, shape in enumerate(["circle", "square", "star"]):
        render(Scene(shape, "red", "white", "large", (0.5, 0.5))).save(folder / f"{i}.png")
    job = reforge.wait_job(reforge.post("/scal-sdt/v1/tag", {"dir": str(folder), "model": "toy", "cache_dir": ""}),
                           timeout=300)
    assert job["status"] == "finished", job
    assert job["result"]["written"] == 3 and "CPUExecutionProvider" in job["result"]["provider"]
    captions = [(folder / f"{i}.txt").read_text() for i in range(3)]
    assert all("red" in c for c in captions), captions
