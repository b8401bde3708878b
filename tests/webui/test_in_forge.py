"""The extension inside the real Forge (lllyasviel/stable-diffusion-webui-forge), offline on the CPU: Forge's model
gives no gradients and has no Train tab, so our tabs come as a top-level "SCAL-SDT Train" tab and training runs on a
trainable copy of the checkpoint file loaded by our standalone adapter — before Forge's first generation too (its
model is then a placeholder); the embedding is usable by name in Forge's next txt2img without a restart. Every LoRA
type we write (lora, locon, loha, lokr, dora; with and without text-encoder modules) is applied by
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
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import start_webui

REPO = Path(__file__).resolve().parents[1].parent
FORGE_ARGS = ("--always-cpu", "--skip-torch-cuda-test", "--skip-prepare-environment", "--skip-install",
              "--skip-python-version-check", "--no-download-sd-model", "--server-name", "127.0.0.1", "--api")
DREAMBOOTH_GIB = 8  # what a DreamBooth step adds to Forge's process here (killed at 12.6 GiB on a busy 23 GiB box)


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
    """A digest of the pixels of a small Forge image (64 px, 2 Euler steps, seed 7). Up to 15 min: Forge first merges
    the LoRA into every layer's weight (and keeps a copy of each); with a LoHa that took over 5 min on a busy 2-core
    box short of memory."""
    import base64

    from PIL import Image

    payload = {"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}
    image = server.post("/sdapi/v1/txt2img", payload, timeout=900)["images"][0]
    with Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[-1]))) as im:
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


def check_applied_by_forge(forge, plain_image: str, path: Path) -> None:
    """A LoRA file of ours with UNet and text-encoder modules in Forge's Lora folder: it and its UNet-only part are
    listed, each changes the image at strength 1, gives the plain image's pixels at 0, and Forge's Lora matches every
    key of both parts."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        modules = {k.split(".", 1)[0] for k in f.keys()}
    n_unet = sum(k.startswith("lora_unet_") for k in modules)
    n_text = sum(k.startswith("lora_te_") for k in modules)
    assert n_unet and n_text and n_unet + n_text == len(modules)
    unet_only = unet_only_copy(path, f"{path.stem}unet")
    forge.post("/sdapi/v1/refresh-loras")
    assert {path.stem, unet_only.stem} <= {item["name"] for item in forge.get("/sdapi/v1/loras")}
    for lora, parts in ((path, {"UNet": n_unet, "CLIP": n_text}), (unet_only, {"UNet": n_unet})):
        since = len(forge.log)
        assert pixels(forge, f"{LORA_PROMPT} <lora:{lora.stem}:1>") != plain_image, lora.name
        assert forge_applied(forge, lora, since) == parts
        assert pixels(forge, f"{LORA_PROMPT} <lora:{lora.stem}:0>") == plain_image, lora.name


@pytest.mark.parametrize("network", ["lora", "locon"])
def test_a_lora_trained_on_forge_is_applied_by_its_lora(forge, plain_image, tmp_path, network):
    """Trained through our API on the trainable copy (UNet and text encoder), listed when the run ends, then used in
    Forge's txt2img (with its UNet-only part)."""
    name = f"fl{network}"
    job = forge.wait_job(forge.post("/scal-sdt/v1/train/lora", {
        "name": name, "network": network, "rank": 4, "alpha": 4, "train_text_encoder": True,
        "instance_data": str(images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks [filewords]",
        "steps": 2, "resolution": 64, "lr": "1e-2", "text_encoder_lr": "1e-2", "preview_every": 0,
        "save_every": 0, "overwrite": True}), timeout=900)
    assert job["status"] == "finished", job
    path = Path(job["result"]["path"])
    assert path.parent == Path(forge.data_dir) / "models" / "Lora" and path.name == f"{name}.safetensors"
    assert name in {item["name"] for item in forge.get("/sdapi/v1/loras")}  # listed when the run ends
    check_applied_by_forge(forge, plain_image, path)


@pytest.fixture(scope="module")
def built_loras(forge) -> dict[str, Path]:
    """LoHa, LoKr and DoRA files for the full-size SD1, made by our LoRA code as a run makes them (build_adapters on
    the checkpoint's layers, the file's tensors and kohya metadata) with their factors moved off their start as a
    few steps move them. These three rebuild a weight-sized change of every layer at each step: a LoHa run with the
    text encoder on a full-size SD1 took Forge's process past 18 GiB on the CPU, more than this box has."""
    import gc
    import time

    import torch

    from scal_sdt.files import save_safetensors
    from scal_sdt.host.standalone import load_host
    from scal_sdt.lora.config import LoraConfig
    from scal_sdt.lora.metadata import lora_metadata
    from scal_sdt.lora.trainer import build_adapters

    host = load_host(str(next(Path(forge.ckpt_dir).glob("realsd1.safetensors"))), device="cpu")
    out = {}
    for i, network in enumerate(("loha", "lokr", "dora")):
        cfg = LoraConfig(name=f"fl{network}", network=network, rank=4, alpha=4, train_text_encoder=True, steps=2,
                         instance_data=str(forge.data_dir))  # not read: no training here
        net, _, _ = build_adapters(cfg, host)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for param in net.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * 1e-2)
        meta = lora_metadata(cfg, family="sd1", model_name=host.model_name, model_hash=host.model_hash, steps=2,
                             datasets={}, n_reg=0, started=time.time(), resolution=64)
        out[network] = save_safetensors(net.file_tensors(), Path(forge.data_dir) / "models" / "Lora" /
                                        f"{cfg.name}.safetensors", metadata=meta)
        del net
    del host
    gc.collect()
    return out


@pytest.mark.parametrize("network", ["loha", "lokr", "dora"])
def test_the_lycoris_types_we_write_are_applied_by_forges_lora(forge, plain_image, built_loras, network):
    check_applied_by_forge(forge, plain_image, built_loras[network])

def test_a_lora_trained_again_under_its_name_is_applied_as_it_now_is(forge, plain_image, tmp_path):
    """A UNet-only LoRA (no text-encoder modules), then trained again with overwrite: Forge's Lora caches a file's
    tensors by its name, so the run drops that cache and the next image uses the new file."""
    body = {"name": "flagain", "network": "lora", "rank": 4, "alpha": 4, "steps": 2, "resolution": 64,
            "instance_data": str(images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks",
            "preview_every": 0, "save_every": 0, "overwrite": True}
    seen = []
    for seed, lr in ((1, "1e-2"), (2, "3e-2")):
        job = forge.wait_job(forge.post("/scal-sdt/v1/train/lora", {**body, "seed": seed, "lr": lr}), timeout=900)
        assert job["status"] == "finished", job
        path = Path(job["result"]["path"])
        since = len(forge.log)
        seen.append(pixels(forge, f"{LORA_PROMPT} <lora:flagain:1>"))
        assert set(forge_applied(forge, path, since)) == {"UNet"}
    assert plain_image not in seen and seen[0] != seen[1]


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2 ** 20


def test_dreambooth_on_forge_writes_a_checkpoint_forge_lists(forge, tmp_path, request):
    """The least-memory recipe (bf16 weights, Adafactor, fused backward) on the trainable copy: the checkpoint lands
    in Forge's checkpoint folder with the source's keys and is listed."""
    from safetensors import safe_open

    if available_gib() < DREAMBOOTH_GIB:
        pytest.skip(f"DreamBooth on a full-size SD1 inside Forge needs about {DREAMBOOTH_GIB} GiB free besides Forge "
                    f"(this box has {available_gib():.1f} GiB free; Forge was killed for memory at 12.6 GiB)")
    # the run's folder goes too: its resume checkpoint holds the UNet and the optimizer's state (GBs)
    request.addfinalizer(lambda: [shutil.rmtree(d) for d in forge.data_dir.glob("*/scal-sdt/forgedb")])
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
