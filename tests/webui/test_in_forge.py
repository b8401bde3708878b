"""The extension inside the real Forge (lllyasviel/stable-diffusion-webui-forge), offline on the CPU: Forge's model
gives no gradients and has no Train tab, so our tabs come as a top-level "SCAL-SDT Train" tab and training runs on a
trainable copy of the checkpoint file loaded by our standalone adapter — before Forge's first generation too (its
model is then a placeholder); the embedding is usable by name in Forge's next txt2img without a restart. Every LoRA
type we write (lora, locon, loha, lokr, dora; with and without text-encoder modules) trained there is applied by
Forge's built-in Lora (extensions-builtin/sd_forge_lora, backend/patcher/lora.py): ``<lora:NAME:1>`` changes the
image, ``<lora:NAME:0>`` gives the plain image's pixels, every key is matched, and it is listed under
``/sdapi/v1/loras`` at once (after ``POST /sdapi/v1/refresh-loras`` for a file put there by hand).

Needs ``FORGE_DIR`` (a Forge folder with launch.py and its repositories/) and ``FORGE_PYTHON`` (its venv's python);
skipped otherwise. Forge detects the model family from a real checkpoint's shapes, so this runs on a full-size SD1
checkpoint with random weights (2 GB; written once, or taken from ``FORGE_CKPT`` when that file exists).

    FORGE_DIR=/work/forge FORGE_PYTHON=/work/forge-venv/bin/python python -m pytest tests/webui/test_in_forge.py
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from pathlib import Path

import pytest

from .conftest import start_webui

REPO = Path(__file__).resolve().parents[1].parent
FORGE_ARGS = ("--always-cpu", "--skip-torch-cuda-test", "--skip-prepare-environment", "--skip-install",
              "--skip-python-version-check", "--no-download-sd-model", "--server-name", "127.0.0.1", "--api")


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    forge_dir, python = os.environ.get("FORGE_DIR"), os.environ.get("FORGE_PYTHON")
    if not forge_dir or not python:
        pytest.skip("set FORGE_DIR and FORGE_PYTHON to run the tests inside the real Forge")
    ckpt = Path(os.environ.get("FORGE_CKPT", "")) if os.environ.get("FORGE_CKPT") else None
    if ckpt is None or not ckpt.is_file():
        import torch

        sys.path.insert(0, str(REPO / "bench"))
        from apt_memory import build

        from scal_sdt.host.checkpoint import save_checkpoint

        ckpt = save_checkpoint(build("real-sd1"), tmp_path_factory.mktemp("forge-models") / "realsd1.safetensors",
                               dtype=torch.float16)
    server = start_webui(Path(forge_dir), Path(python), tmp_path_factory.mktemp("forge"), ckpt.parent,
                         extensions=[REPO], wait_model=False, base_args=FORGE_ARGS, settings={})
    yield server
    server.stop()


def images(root: Path, n: int = 4) -> Path:
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    make_held_out_colour_set(root, n, seed=3)
    return root


def test_training_on_forge_uses_a_copy_of_the_checkpoint_and_the_result_is_used(forge, tmp_path):
    ids = {c.get("props", {}).get("elem_id") for c in forge.get("/config")["components"]}
    assert {"scal_sdt_ti_start", "scal_sdt_db_start", "scal_sdt_hn_start", "scal_sdt_lora_start"} <= ids  # its tab
    body = {"data": str(images(tmp_path / "data")), "steps": 2, "resolution": 64, "preview_every": 0,
            "save_every": 0, "lr": "0.01"}
    # before Forge's first generation its model is a placeholder: the file it would load is trained on
    job = forge.wait_job(forge.post("/scal-sdt/v1/train/embedding", {**body, "name": "forgefirst"}), timeout=600)
    assert job["status"] == "finished", job
    assert "trainable copy" in forge.log
    assert (forge.data_dir / "embeddings" / "forgefirst.safetensors").exists()
    forge.txt2img(prompt="a photo of forgefirst", steps=2, width=64, height=64)
    assert "Used Embedding [forgefirst]" in forge.log
    # with Forge's model loaded: the new embedding is in its text engine's database for the next image, no restart
    job = forge.wait_job(forge.post("/scal-sdt/v1/train/embedding", {**body, "name": "forgesecond"}), timeout=600)
    assert job["status"] == "finished", job
    forge.txt2img(prompt="a photo of forgesecond", steps=2, width=64, height=64)
    assert "Used Embedding [forgesecond]" in forge.log


def test_dreambooth_on_forge_writes_a_checkpoint_forge_lists(forge, tmp_path, request):
    """The least-memory recipe (bf16 weights, Adafactor, fused backward) on the trainable copy: the checkpoint lands
    in Forge's checkpoint folder with the source's keys and is listed."""
    from safetensors import safe_open

    job = forge.wait_job(forge.post("/scal-sdt/v1/train/dreambooth", {
        "name": "forgedb", "instance_data": str(images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks",
        "steps": 1, "resolution": 64, "lr": "1e-6", "preview_every": 0, "master_weights": "bf16",
        "optimizer": "adafactor", "fused_backward": True, "gradient_checkpointing": True, "keep_checkpoints": 1,
        "overwrite": True}), timeout=900)
    assert job["status"] == "finished", job
    trained = Path(job["result"]["path"])
    request.addfinalizer(lambda: [p.unlink(missing_ok=True) for p in trained.parent.glob("forgedb.*")])
    source = next(Path(forge.ckpt_dir).glob("realsd1.safetensors"))
    keys = []
    for path in (source, trained):
        with safe_open(str(path), framework="pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1]
    forge.post("/sdapi/v1/refresh-checkpoints")
    assert "forgedb" in {m["model_name"] for m in forge.get("/sdapi/v1/sd-models")}


def test_aesthetic_gradients_on_forge_say_why_not_and_the_image_is_made(forge):
    """Forge encodes prompts without gradients, so the accordion cannot tune its text encoder: the image is made
    plain and the reason is in its infotext (not a failed generation)."""
    import torch

    folder = Path(forge.data_dir) / "models" / "aesthetic_embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torch.randn(1, 768), folder / "forgeae.pt")
    args = [True, "forgeae", 0.5, 2, 1e-4, False, 0.1, "", False, True, "None", 1.0]
    images, info = forge.txt2img(prompt="a red circle", steps=2,
                                 alwayson_scripts={"SCAL-SDT aesthetic gradients": {"args": args}})
    assert len(images) == 1
    assert "aesthetic gradients not applied: this WebUI's model has no text encoder to tune" in forge.log


LORA_PROMPT = "a photo of sks"


def pixels(server, prompt: str) -> str:
    """A digest of the pixels of a small Forge image (64 px, 2 Euler steps, seed 7)."""
    from PIL import Image

    images, _ = server.txt2img(prompt=prompt, steps=2, seed=7)
    with Image.open(io.BytesIO(images[0])) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def plain_image(forge) -> str:
    return pixels(forge, LORA_PROMPT)


def forge_applied(forge, path: Path, since: int) -> dict[str, int]:
    """What Forge's Lora said about ``path`` in the log after offset ``since``: keys loaded per part (UNet, CLIP)
    and keys skipped; a file with keys Forge could not match fails."""
    log = forge.log[since:]
    assert f"LoRA version mismatch for KModel: {path}" not in log, log[-3000:]
    assert not re.search(rf"Loading {re.escape(str(path))} .*unmatched keys", log), log[-3000:]
    loaded = {}
    for part, n, skipped in re.findall(rf"\[LORA\] Loaded {re.escape(str(path))} for KModel-(UNet|CLIP) with (\d+) "
                                       rf"keys at weight [\d.]+ \(skipped (\d+) keys\)", log):
        assert skipped == "0", (part, skipped)
        loaded[part] = int(n)
    return loaded


def unet_only_copy(path: Path, name: str) -> Path:
    """The trained file less its text-encoder modules (what a run without train_text_encoder writes), as ``name``."""
    from safetensors import safe_open

    from scal_sdt.files import save_safetensors

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("lora_unet_")}
        meta = {**f.metadata(), "ss_output_name": name, "modelspec.title": name, "ss_text_encoder_lr": "None"}
    return save_safetensors(tensors, path.with_name(f"{name}.safetensors"), metadata=meta)


@pytest.mark.parametrize("network", ["lora", "locon", "loha", "lokr", "dora"])
def test_every_lora_type_trained_on_forge_is_applied_by_its_lora(forge, plain_image, tmp_path, network):
    """Trained through our API on the trainable copy (UNet and text encoder), then used in Forge's txt2img: the
    whole file and its UNet-only part each change the image at strength 1, give the plain image's pixels at 0, and
    Forge's Lora matches every key of both parts."""
    from safetensors import safe_open

    name = f"fl{network}"
    job = forge.wait_job(forge.post("/scal-sdt/v1/train/lora", {
        "name": name, "network": network, "rank": 4, "alpha": 4, "train_text_encoder": True,
        "instance_data": str(images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks [filewords]",
        "steps": 2, "resolution": 64, "lr": "1e-2", "text_encoder_lr": "1e-2", "preview_every": 0,
        "save_every": 0, "overwrite": True}), timeout=900)
    assert job["status"] == "finished", job
    path = Path(job["result"]["path"])
    assert path.parent == Path(forge.data_dir) / "models" / "Lora" and path.name == f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        modules = {k.split(".", 1)[0] for k in f.keys()}
    n_unet = sum(k.startswith("lora_unet_") for k in modules)
    n_text = sum(k.startswith("lora_te_") for k in modules)
    assert n_unet and n_text and n_unet + n_text == len(modules)
    assert name in {item["name"] for item in forge.get("/sdapi/v1/loras")}  # listed when the run ends
    unet_only = unet_only_copy(path, f"{name}unet")
    forge.post("/sdapi/v1/refresh-loras")
    assert unet_only.stem in {item["name"] for item in forge.get("/sdapi/v1/loras")}
    for lora, parts in ((path, {"UNet": n_unet, "CLIP": n_text}), (unet_only, {"UNet": n_unet})):
        since = len(forge.log)
        assert pixels(forge, f"{LORA_PROMPT} <lora:{lora.stem}:1>") != plain_image, lora.name
        assert forge_applied(forge, lora, since) == parts
        assert pixels(forge, f"{LORA_PROMPT} <lora:{lora.stem}:0>") == plain_image, lora.name
