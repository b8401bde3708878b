"""DreamBooth inside the real WebUI: trained through our API on the loaded model (class images drawn by the WebUI's
own txt2img), the new checkpoint lands in its checkpoint folder with the source's keys and shapes, is listed at once,
loads in the WebUI and in the standalone adapter and draws differently; the WebUI's loaded model is as it was."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .test_extension_in_webui import digest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("tiny-sd1"), extensions=[REPO], name="webui-scal-sdt")


def test_dreambooth_in_the_webui(server, tiny_checkpoint, tmp_path_factory):
    from safetensors import safe_open

    from scal_sdt.host.standalone import load_host
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    root = tmp_path_factory.mktemp("db-webui")
    make_held_out_colour_set(root / "inst", 4, seed=4)
    prompt = "a photo of sks"
    before = digest(server, prompt)
    cls = Path(server.data_dir) / "dreambooth-class-dbweb"  # the API writes only inside the WebUI's folders
    job = server.post("/scal-sdt/v1/train/dreambooth", {
        "name": "dbweb", "instance_data": str(root / "inst"), "instance_prompt": "a photo of sks [filewords]",
        "class_data": str(cls), "class_prompt": "a photo of a shape", "num_class_images": 2,
        "class_steps": 2, "steps": 4, "resolution": 64, "lr": "1e-3", "preview_every": 0, "overwrite": True})
    job = server.wait_job(job, timeout=300)
    assert job["status"] == "finished", job
    assert len(list(cls.glob("*.png"))) == 2  # drawn by the WebUI's txt2img
    assert digest(server, prompt) == before  # the loaded model was put back as it was

    source = tiny_checkpoint("tiny-sd1")
    trained = source.parent / "dbweb.safetensors"
    assert trained.exists() and trained.with_suffix(".yaml").exists()
    shapes = {}
    for path in (source, trained):
        with safe_open(str(path), framework="pt") as f:
            shapes[path] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes[trained] == shapes[source]
    assert "dbweb" in {m["model_name"] for m in server.get("/sdapi/v1/sd-models")}

    host = load_host(str(trained), device="cpu")  # the standalone adapter (diffusers' layout) loads it too
    with torch.no_grad():
        assert torch.isfinite(host.predict(torch.randn(1, 4, 8, 8), torch.tensor([3]),
                                           host.encode_prompts([prompt]))).all()

    original = server.get("/sdapi/v1/options")["sd_model_checkpoint"]
    try:
        server.post("/sdapi/v1/options", {"sd_model_checkpoint": "dbweb"}, timeout=300)
        assert server.get("/sdapi/v1/options")["sd_model_checkpoint"].startswith("dbweb")
        assert digest(server, prompt) != before  # the fine-tune draws differently
    finally:
        server.post("/sdapi/v1/options", {"sd_model_checkpoint": original}, timeout=300)
    assert digest(server, prompt) == before

    # pivotal tuning and an extracted LoRA: the embedding and the LoRA land where the WebUI lists them, at once
    job = server.wait_job(server.post("/scal-sdt/v1/train/dreambooth", {
        "name": "dbpiv", "instance_data": str(root / "inst"), "instance_prompt": "a photo of [name] [filewords]",
        "steps": 2, "resolution": 64, "lr": "1e-3", "preview_every": 0, "pivotal_vectors": 1, "extract_lora": 4,
        "extract_lora_conv": 4}), timeout=300)
    assert job["status"] == "finished", job
    assert "dbpiv" in server.get("/sdapi/v1/embeddings")["loaded"]
    assert "dbpiv-lora" in {item["name"] for item in server.get("/sdapi/v1/loras")}
    # the WebUI's Lora extension applies the extracted file, LoCon convolutions included, without complaint
    plain = digest(server, "a photo of dbpiv")
    assert digest(server, "a photo of dbpiv <lora:dbpiv-lora:1>") != plain
    assert digest(server, "a photo of dbpiv <lora:dbpiv-lora:0>") == plain
    assert "dbpiv-lora" not in "".join(line for line in server.log_tail(200).splitlines() if "rror" in line)


@pytest.mark.parametrize("family", ["tiny-sd2", "tiny-sdxl"])
def test_dreambooth_on_another_checkpoint_of_the_webuis_list(server, tiny_checkpoint, tmp_path_factory, family):
    """The source picked from the WebUI's list (SD2, SDXL, while an SD1 checkpoint is loaded) is loaded for the run
    (with Adafactor, the fused backward pass and an EMA; bf16 weights are refused on a CPU WebUI), the result has its
    keys and shapes, and the checkpoint loaded before is loaded again afterwards; a name not in the list is a 422."""
    import json

    from safetensors import safe_open

    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    from .conftest import WebUIError

    root = tmp_path_factory.mktemp("db-source")
    make_held_out_colour_set(root / "inst", 2, seed=5)
    other = tiny_checkpoint(family)
    server.post("/sdapi/v1/refresh-checkpoints")
    original = server.get("/sdapi/v1/options")["sd_model_checkpoint"]
    before = digest(server, "a photo of sks")
    body = {"name": f"db{family[5:]}", "instance_data": str(root / "inst"), "instance_prompt": "a photo of sks", "steps": 2,
            "resolution": 64, "lr": "1e-3", "preview_every": 0, "overwrite": True,
            "fused_backward": True, "ema_decay": 0.5, "optimizer": "adafactor"}
    with pytest.raises(WebUIError, match="422.*no checkpoint .{1,2}no-such-model"):
        server.post("/scal-sdt/v1/train/dreambooth", {**body, "model": "no-such-model"})
    with pytest.raises(WebUIError, match="422.*master_weights bf16 needs a GPU inside the WebUI"):  # a CPU WebUI
        server.post("/scal-sdt/v1/train/dreambooth", {**body, "master_weights": "bf16"})
    job = server.wait_job(server.post("/scal-sdt/v1/train/dreambooth", {**body, "model": other.name}), timeout=300)
    assert job["status"] == "finished", job
    trained = other.parent / f"db{family[5:]}.safetensors"
    assert family in json.loads(trained.with_suffix(".json").read_text())["source"]
    shapes = {}
    for path in (other, trained):
        with safe_open(str(path), framework="pt") as f:
            shapes[path] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes[trained] == shapes[other]  # an SD2 / SDXL checkpoint's keys, not the loaded SD1 one's
    assert server.get("/sdapi/v1/options")["sd_model_checkpoint"] == original
    assert digest(server, "a photo of sks") == before


def test_the_dreambooth_train_tab_is_built_from_the_config(server):
    import dataclasses

    from scal_sdt.dreambooth.config import DreamBoothConfig

    ids = {c.get("props", {}).get("elem_id") for c in server.get("/config")["components"]}
    assert "scal_sdt_db_tab" in ids and "scal_sdt_db_start" in ids
    for f in dataclasses.fields(DreamBoothConfig):
        if f.name not in ("device", "memory_mode"):
            assert f"scal_sdt_db_{f.name}" in ids, f.name
    model = next(c["props"] for c in server.get("/config")["components"]
                 if c.get("props", {}).get("elem_id") == "scal_sdt_db_model")
    offered = [c[0] if isinstance(c, (list, tuple)) else c for c in model["choices"]]
    assert offered[0] == "(the loaded checkpoint)" and model["value"] == offered[0]
    assert any(name.startswith("tiny-sd1") for name in offered[1:])  # the WebUI's checkpoint list
    assert "dreambooth" in server.get("/scal-sdt/v1/options")
