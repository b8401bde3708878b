"""Hypernetworks inside the real WebUI: the Train sub-tab, a hypernetwork trained through our API on the loaded
model and listed by the WebUI at once, our files loaded by the WebUI's own loader (``<hypernet:…>`` changes the
image, strength 0 does not), the Settings picker applying one to every generation, written to the infotext, never
twice, and None restoring the image bit for bit."""
from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red star on a white background"


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("toy"), extensions=[REPO], name="webui-scal-sdt-toy")


def pixels(server, prompt: str = PROMPT, **payload) -> tuple[str, dict]:
    images, info = server.txt2img(prompt=prompt, seed=5, steps=8, **payload)
    with Image.open(io.BytesIO(images[0])) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest(), info


def hypernetwork_dir(server) -> Path:
    return server.data_dir / "models" / "hypernetworks"


def set_options(server, **options) -> None:
    server.post("/sdapi/v1/options", options)


@pytest.fixture(scope="module")
def our_file(server):
    """A hypernetwork we made (random, strong enough to see), dropped into the WebUI's folder."""
    from scal_sdt.hypernetwork.format import save_hypernetwork
    from scal_sdt.hypernetwork.module import create_hypernetwork

    hn = create_hypernetwork("ours", [64], structure="1, 2, 1", activation="relu", weight_init="XavierNormal",
                             seed=4)
    folder = hypernetwork_dir(server)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_hypernetwork(hn, folder / "ours.pt")
    assert "ours.pt" in server.get("/scal-sdt/v1/hypernetworks")["files"]  # our listing rescans the WebUI's folder
    return path


def listed(server) -> set[str]:
    return {h["name"] for h in server.get("/sdapi/v1/hypernetworks")}


def test_the_hypernetwork_train_tab_is_built_from_the_config(server):
    from scal_sdt.hypernetwork.config import HypernetworkConfig

    ids = {c.get("props", {}).get("elem_id") for c in server.get("/config")["components"]}
    assert "scal_sdt_hn_tab" in ids and "scal_sdt_hn_start" in ids
    for f in dataclasses.fields(HypernetworkConfig):
        if f.name not in ("model", "device", "memory_mode"):
            assert f"scal_sdt_hn_{f.name}" in ids, f.name


def test_our_file_loads_in_the_webui_and_strength_zero_is_the_plain_model(server, our_file):
    set_options(server, scal_sdt_hypernetwork="None")
    plain, _ = pixels(server)
    assert "ours" in listed(server)
    with_hn, _ = pixels(server, PROMPT + " <hypernet:ours:1>")
    zero, _ = pixels(server, PROMPT + " <hypernet:ours:0>")
    assert with_hn != plain and zero == plain, server.log_tail()


def test_settings_picker_applies_once_writes_infotext_and_none_restores(server, our_file):
    set_options(server, scal_sdt_hypernetwork="None")
    plain, _ = pixels(server)
    tagged, _ = pixels(server, PROMPT + "<hypernet:ours:1>")
    set_options(server, scal_sdt_hypernetwork="ours", scal_sdt_hypernetwork_strength=1.0)
    try:
        picked, info = pixels(server)
        assert picked == tagged  # the same as the user's own tag
        assert "Hypernet: ours" in info["infotexts"][0] and "<hypernet:ours:1>" in info["infotexts"][0]
        both, _ = pixels(server, PROMPT + "<hypernet:ours:1>")  # tag + Settings: still applied once
        assert both == tagged
        set_options(server, sd_hypernetwork="ours")  # the WebUI's own option too: still once
        assert pixels(server)[0] == tagged
    finally:
        set_options(server, scal_sdt_hypernetwork="None", sd_hypernetwork="None")
    assert pixels(server)[0] == plain


def test_a_hypernetwork_trained_through_our_api_is_listed_at_once(server, tmp_path_factory):
    from scal_sdt.toy_world.world import make_dataset

    folder = tmp_path_factory.mktemp("hn-data")
    make_dataset(folder, 6, seed=3)
    job = server.post("/scal-sdt/v1/train/hypernetwork", {"name": "apitrained", "data": str(folder), "steps": 4,
                                                         "lr": "1e-4", "save_every": 0, "preview_every": 0})
    job = server.wait_job(job, timeout=240)
    assert job["status"] == "finished", job
    assert "apitrained" in listed(server)
    saved = torch.load(hypernetwork_dir(server) / "apitrained.pt", weights_only=True)
    assert saved["step"] == 4 and 64 in saved
    assert pixels(server, PROMPT + "<hypernet:apitrained:1>")[0]  # the WebUI applies it without error
    # it learned: gradients reach a hypernetwork inside the WebUI's UNet (ldm's own checkpointing would drop them)
    job = server.wait_job(server.post("/scal-sdt/v1/train/hypernetwork", {
        "name": "apionestep", "data": str(folder), "steps": 1, "lr": "1e-4", "save_every": 0, "preview_every": 0}),
        timeout=240)
    assert job["status"] == "finished", job
    one = torch.load(hypernetwork_dir(server) / "apionestep.pt", weights_only=True)
    flat = lambda layers: torch.cat([v.flatten().float() for d in layers for v in d.values()])  # noqa: E731
    assert (flat(saved[64]) - flat(one[64])).abs().max() > 0


def test_a_file_the_webui_made_loads_here(server):
    """The WebUI's own create/hypernetwork writes the file (its Hypernetwork.save); our loader reads the same
    structure and weights, and applying it changes our UNet's output."""
    from scal_sdt.hypernetwork.format import load_hypernetwork

    server.post("/sdapi/v1/create/hypernetwork", {
        "name": "webuimade", "enable_sizes": [64], "overwrite_old": True, "layer_structure": [1, 2, 1],
        "activation_func": "relu", "weight_init": "XavierNormal", "add_layer_norm": True, "use_dropout": False})
    path = hypernetwork_dir(server) / "webuimade.pt"
    raw = torch.load(path, weights_only=True)
    hn = load_hypernetwork(path)
    assert hn.name == "webuimade" and hn.widths == [64] and hn.activation == "relu" and hn.layer_norm
    for ours, (name, theirs) in zip(hn.layers[64][0].state_dict().values(), raw[64][0].items()):
        assert torch.equal(ours, theirs), name
