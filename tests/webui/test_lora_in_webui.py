"""LoRA training inside the real WebUI: trained through our API on the loaded model, every network type lands in
the WebUI's Lora folder, is listed under /sdapi/v1/loras without a restart, and the WebUI's built-in Lora extension
applies it — <lora:NAME:1> changes the image, <lora:NAME:0> gives the plain image's pixels; the loaded model is as it
was. (The WebUI's venv needs lycoris-lora: install.py is not run by these fixtures.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from .test_extension_in_webui import digest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("tiny-sd1"), extensions=[REPO], name="webui-scal-sdt")


@pytest.mark.parametrize("network", ["lora", "locon", "loha", "lokr", "dora"])
def test_every_lora_type_trained_in_the_webui_is_applied_by_its_lora_extension(server, tmp_path_factory, network):
    from safetensors import safe_open

    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    root = tmp_path_factory.mktemp(f"lora-webui-{network}")
    make_held_out_colour_set(root / "inst", 4, seed=4)
    prompt = "a photo of sks"
    before = digest(server, prompt)
    name = f"lw{network}"
    job = server.post("/scal-sdt/v1/train/lora", {
        "name": name, "network": network, "rank": 4, "alpha": 4, "instance_data": str(root / "inst"),
        "instance_prompt": "a photo of sks [filewords]", "steps": 4, "resolution": 64, "lr": "1e-2",
        "preview_every": 0, "overwrite": True})
    job = server.wait_job(job, timeout=300)
    assert job["status"] == "finished", job
    assert digest(server, prompt) == before  # the loaded model is untouched
    path = Path(job["result"]["path"])
    assert path.parent.name == "Lora" and path.name == f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_output_name"] == name and meta["ss_base_model_version"] == "sd_v1"
    assert name in {item["name"] for item in server.get("/sdapi/v1/loras")}  # listed at once
    assert digest(server, f"{prompt} <lora:{name}:1>") != before
    assert digest(server, f"{prompt} <lora:{name}:0>") == before
    assert name not in "".join(line for line in server.log_tail(200).splitlines() if "rror" in line)


def test_bad_lora_requests_are_422s(server, tmp_path_factory):
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    from .conftest import WebUIError

    root = tmp_path_factory.mktemp("lora-bad")
    make_held_out_colour_set(root / "inst", 2, seed=4)
    body = {"name": "lwbad", "instance_data": str(root / "inst"), "steps": 2, "resolution": 64}
    with pytest.raises(WebUIError, match="422.*lora, locon, loha, lokr, dora"):
        server.post("/scal-sdt/v1/train/lora", {**body, "network": "boft"})
    with pytest.raises(WebUIError, match="422.*alpha must be > 0"):
        server.post("/scal-sdt/v1/train/lora", {**body, "alpha": 0})
    with pytest.raises(WebUIError, match="422.*train_text_encoder"):
        server.post("/scal-sdt/v1/train/lora", {**body, "train_text_encoder": True})


def test_the_lora_train_tab_is_built_from_the_config(server):
    import dataclasses

    from scal_sdt.lora.config import LoraConfig

    ids = {c.get("props", {}).get("elem_id") for c in server.get("/config")["components"]}
    assert "scal_sdt_lora_tab" in ids and "scal_sdt_lora_start" in ids
    for f in dataclasses.fields(LoraConfig):
        if f.name not in ("model", "device", "memory_mode"):
            assert f"scal_sdt_lora_{f.name}" in ids, f.name
    assert "train-lora" in server.get("/scal-sdt/v1/options")
