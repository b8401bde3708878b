"""Aesthetic gradients inside the real WebUI (toy model): an embedding made through our API for the loaded model's
family, picked in the txt2img accordion (through the API's alwayson_scripts): it changes the image, holds on the
second generation (the tuned conditioning comes from our cache, never from the WebUI's persistent one), weight 0 and
turning it off give the plain image bit for bit, the infotext carries the extension's keys, and it pairs with a
hypernetwork (the guide's artist-style recipe: both apply)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a blue star on a white background"
TITLE = "scal-sdt aesthetic gradients"


def args(embedding="reds", weight=0.5, steps=10, lr=1e-3, enabled=True, hypernetwork="None", batchwise=True):
    return {TITLE: {"args": [enabled, embedding, weight, steps, lr, False, 0.1, "", False, batchwise, hypernetwork,
                             1.0]}}


def digests(server, scripts=None, **payload) -> tuple[list[str], dict]:
    payload = {"prompt": PROMPT, "seed": 5, "steps": 8, **payload}
    if scripts:
        payload["alwayson_scripts"] = scripts
    images, info = server.txt2img(**payload)
    out = []
    for png in images:
        with Image.open(io.BytesIO(png)) as im:
            out.append(hashlib.sha256(im.convert("RGB").tobytes()).hexdigest())
    return out, info


def tunings(server) -> int:
    return server.log.count("[SCAL-SDT] aesthetic embedding reds:")


def test_the_accordion_and_the_train_sub_tab_are_there(toy_server):
    import dataclasses

    from scal_sdt.aesthetic.config import AestheticEmbeddingConfig

    ids = {c.get("props", {}).get("elem_id") for c in toy_server.get("/config")["components"]}
    for where in ("txt2img", "img2img"):
        assert f"script_{where}_scalsdt_aesthetic_gradients_embedding" in ids
        assert f"script_{where}_scalsdt_aesthetic_gradients_weight" in ids
    assert "scal_sdt_ae_tab" in ids and "scal_sdt_ae_start" in ids
    for f in dataclasses.fields(AestheticEmbeddingConfig):
        if f.name not in ("model", "device"):
            assert f"scal_sdt_ae_{f.name}" in ids, f.name


def test_it_changes_the_image_holds_on_the_second_one_and_off_restores(toy_server, reds):
    plain, _ = digests(toy_server, batch_size=2)
    zero, _ = digests(toy_server, args(weight=0.0), batch_size=2)
    assert zero == plain, toy_server.log_tail()
    before = tunings(toy_server)
    on, info = digests(toy_server, args(), batch_size=2)
    assert on[0] != plain[0] and on[1] != plain[1], toy_server.log_tail()
    assert "Aesthetic weight: 0.5" in info["infotexts"][0] and "Aesthetic embedding: reds" in info["infotexts"][0]
    again, _ = digests(toy_server, args(), batch_size=2)  # the WebUI's persistent cond cache must not undo it
    assert again == on
    assert tunings(toy_server) == before + 1  # tuned once: the batch and the second generation reused it
    off, _ = digests(toy_server, args(enabled=False), batch_size=2)
    assert off == plain
    each, _ = digests(toy_server, args(batchwise=False), batch_size=2)
    assert each[0] != plain[0]


def test_it_pairs_with_a_hypernetwork(toy_server, reds):
    from scal_sdt.hypernetwork.format import save_hypernetwork
    from scal_sdt.hypernetwork.module import create_hypernetwork

    folder = toy_server.data_dir / "models" / "hypernetworks"
    folder.mkdir(parents=True, exist_ok=True)
    save_hypernetwork(create_hypernetwork("style", [64], "1, 2, 1", "relu", "XavierNormal", seed=3),
                      folder / "style.pt")
    toy_server.get("/scal-sdt/v1/hypernetworks")  # rescans the WebUI's folder
    plain, _ = digests(toy_server)
    ae, _ = digests(toy_server, args())
    hn, _ = digests(toy_server, args(weight=0.0, hypernetwork="style"))
    both, info = digests(toy_server, args(hypernetwork="style"))
    assert len({plain[0], ae[0], hn[0], both[0]}) == 4, toy_server.log_tail()
    assert "Hypernet: style" in info["infotexts"][0] and "Aesthetic embedding: reds" in info["infotexts"][0]


def test_a_missing_embedding_is_named_and_the_image_still_made(toy_server, reds):
    plain, _ = digests(toy_server)
    missing, _ = digests(toy_server, args(embedding="nothere"))  # the reason is a comment under the image, and logged
    assert missing == plain and "aesthetic gradients not applied: aesthetic embedding 'nothere'" in toy_server.log


def random_aesthetic(ckpt: Path, folder: Path, name: str) -> None:
    """An aesthetic file for a tiny checkpoint: a random unit row per tower, as wide as the checkpoint's towers embed
    (OpenCLIP's text_projection), and a stored projection for CLIP-L (which has none of its own)."""
    import torch
    from safetensors import safe_open

    from scal_sdt.files import save_safetensors

    with safe_open(str(ckpt), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()
                  if k.endswith("model.text_projection") or k.endswith("text_model.final_layer_norm.weight")}
    g = torch.Generator().manual_seed(1)
    rows = {}
    for k, shape in shapes.items():
        if k.endswith("final_layer_norm.weight"):  # OpenAI CLIP-L
            rows["clip_l"] = torch.randn(1, 24, generator=g)
            rows["clip_l.text_projection"] = torch.randn(shape[0], 24, generator=g) * 0.2
        else:
            rows["clip_g" if k.startswith("conditioner") else "clip_h"] = torch.randn(1, shape[1], generator=g)
    if not rows:  # SD2 without a stored projection: the WebUI builds the tower from our open_clip config
        import json

        config = json.loads(next(ckpt.with_suffix(".text_encoder").glob("*.json")).read_text())
        rows["clip_h"] = torch.randn(1, config["embed_dim"], generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v / v.norm(dim=-1, keepdim=True) if "." not in k else v for k, v in rows.items()},
                     folder / f"{name}.safetensors")


@pytest.mark.parametrize("family,flag", [("tiny-sd2", None), ("tiny-sdxl", None), ("tiny-sd1", "--medvram"),
                                         ("tiny-sdxl", "--lowvram")])
def test_sd2_sdxl_and_the_memory_modes(webui_server, tiny_checkpoint, family, flag):
    """SD2's OpenCLIP-H and SDXL's two towers are tuned too; under --medvram/--lowvram the WebUI's hooks place them."""
    ckpt = tiny_checkpoint(family)
    if flag:
        server = webui_server(ckpt, extensions=[REPO], extra_args=[flag], name=f"webui-scal-sdt-{family}{flag[1:]}")
    else:
        server = webui_server(ckpt, extensions=[REPO], name=f"webui-scal-sdt-{family}")
    random_aesthetic(ckpt, server.data_dir / "models" / "aesthetic_embeddings", "look")
    size = {"width": 64, "height": 64}
    plain, _ = digests(server, **size)
    on, info = digests(server, args("look", weight=0.8, steps=10, lr=1e-2), **size)
    assert on != plain, server.log_tail()
    assert "Aesthetic embedding: look" in info["infotexts"][0]
    assert digests(server, args("look", weight=0.8, steps=10, lr=1e-2), **size)[0] == on
    assert digests(server, **size)[0] == plain
