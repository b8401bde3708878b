"""APT inside the real WebUI: a pair trained through our API on the loaded model (the doubled batch through the
WebUI's own UNet wrapper, the reconstruction decoded through its own VAE with gradients), NAME and NAME-neg both
listed at once, and a prompt with NAME and a negative prompt with NAME-neg changes the image."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from .test_extension_in_webui import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("toy"), extensions=[REPO], name="webui-scal-sdt-toy")


def pixels(server, prompt: str, negative: str = "") -> str:
    images, _ = server.txt2img(prompt=prompt, negative_prompt=negative, seed=3, steps=8, cfg_scale=5)
    with Image.open(io.BytesIO(images[0])) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


def test_an_apt_pair_trained_in_the_webui_is_usable_at_once(server, tmp_path_factory):
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    data = tmp_path_factory.mktemp("apt-data")
    make_held_out_colour_set(data, 6, seed=2)
    job = train(server, name="aptpink", data=str(data), mode="apt", neg_vectors=2, steps=6, lr="0.02",
                template="filewords", rec_weight=0.5, rec_crop=4, save_every=0, preview_every=3, preview_steps=2)
    assert job["status"] == "finished", job
    loaded = server.get("/sdapi/v1/embeddings")["loaded"]
    assert {"aptpink", "aptpink-neg"} <= set(loaded), loaded
    assert loaded["aptpink-neg"]["vectors"] == 2
    prompt = "a large aptpink circle on a white background"
    plain = pixels(server, prompt)
    assert pixels(server, prompt, "aptpink-neg") != plain  # the negative embedding acts through the WebUI
    assert pixels(server, prompt, "aptpink-neg") == pixels(server, prompt, "aptpink-neg")  # and deterministically


def test_unet_parts_trained_in_the_webui_are_a_lora_it_lists_and_applies(server, tmp_path_factory):
    """--unet-parts inside the WebUI: the LoRA lands in its models/Lora, is listed at once, <lora:NAME-unet:1> changes
    the image through the WebUI's own Lora extension, and the loaded model is as it was after training."""
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    data = tmp_path_factory.mktemp("apt-unet-data")
    make_held_out_colour_set(data, 6, seed=3)
    prompt = "a large red circle on a white background"
    before = pixels(server, prompt)
    job = train(server, name="aptunet", data=str(data), mode="apt", neg_vectors=2, steps=8, lr="0.02",
                template="filewords", unet_parts="attn2", unet_lr=0.05, unet_rank=4, save_every=0, preview_every=0,
                gradient_checkpointing=True)
    assert job["status"] == "finished", job
    assert (server.data_dir / "models" / "Lora" / "aptunet-unet.safetensors").exists()
    assert "aptunet-unet" in {item["name"] for item in server.get("/sdapi/v1/loras")}
    assert pixels(server, prompt) == before  # our hooks are gone: the WebUI's model is as it was
    assert pixels(server, prompt + " <lora:aptunet-unet:1>") != before
    assert pixels(server, prompt + " <lora:aptunet-unet:0>") == before
