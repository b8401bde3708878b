"""Our checkpoints (``save_checkpoint`` + yaml + text-encoder files) loaded and run by a REAL AUTOMATIC1111 WebUI.

The first tests need no WebUI: the text-encoder files we write beside a checkpoint (``host/text_encoder_folder.py``)
and the yaml naming them. The rest start the WebUI (``conftest.py``; skipped unless WEBUI_DIR and WEBUI_PYTHON are
set) on our tiny checkpoints, offline on the CPU, and generate through its API:

    WEBUI_DIR=/work/webui WEBUI_PYTHON=/work/webui-venv/bin/python python -m pytest tests/webui -q
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from .conftest import webui_dir_files

PROMPTS = ["a red square", "a blue circle", "A  PAINTING, of an Astronaut riding a horse!!",
           "café naïve 123 \"quotes\" it's", "red_square (blue:1.2) [dog], <lora:x:1>", "日本語 emoji 🎉",
           "x" * 90]
# transformers 4.30's slow CLIPTokenizer (the WebUI's) runs ftfy, which also unescapes HTML entities, as open_clip
# does; transformers 5.x's tokenizer does neither, so this one is only checked in the WebUI's python
WEBUI_ONLY_PROMPTS = ["Tom &amp; Jerry"]
WEBUI_PYTHON_TIMEOUT_S = 120


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pixels(png: bytes) -> tuple[tuple[int, int], str, bytes]:
    im = Image.open(io.BytesIO(png))
    return im.size, im.mode, im.convert("RGB").tobytes()


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))["model"]


# ----------------------------------------------------------------------------------------- no WebUI needed
def test_clip_folder_tokenizer_and_config(tmp_path):
    """The folder's tokenizer gives open_clip's SimpleTokenizer ids; its config.json is the text config."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextConfig, CLIPTokenizer

    from scal_sdt.host.text_encoder_folder import TOKENIZER_FILES, write_clip_text_folder
    from scal_sdt.host.tiny import clip_l_config
    from scal_sdt.host.tokenizer import clip_tokenizer

    config = clip_l_config()
    folder = write_clip_text_folder(config, tmp_path / "te")
    assert folder.is_absolute() and all((folder / f).is_file() for f in (*TOKENIZER_FILES, "config.json"))
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == "clip_text_model" and raw["architectures"] == ["CLIPTextModel"]
    back = CLIPTextConfig.from_pretrained(folder, local_files_only=True)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "vocab_size", "max_position_embeddings", "projection_dim"):
        assert getattr(back, key) == getattr(config, key), key
    tok, ref, ours = CLIPTokenizer.from_pretrained(folder, local_files_only=True), SimpleTokenizer(), clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids == ref.encode(prompt) == ours.encode(prompt), prompt
        assert tok(prompt)["input_ids"] == [49406, *ids, 49407]


def test_yaml_names_the_folder_by_absolute_path(tiny_checkpoint):
    from scal_sdt.host.checkpoint import configs_from_yaml, load_checkpoint

    ckpt = tiny_checkpoint("tiny-sd1")
    cond = read_yaml(ckpt.with_suffix(".yaml"))["params"]["cond_stage_config"]
    assert cond["target"] == "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
    version = Path(cond["params"]["version"])
    assert version.is_absolute() and version == ckpt.with_name("tiny-sd1.text_encoder")
    assert (version / "config.json").is_file() and (version / "vocab.json").is_file()
    text = configs_from_yaml(ckpt.with_suffix(".yaml")).text_configs[0]
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (32, 2, 2)
    loaded = load_checkpoint(ckpt)
    assert loaded.text_encoders[0].config.hidden_size == 32


@pytest.mark.parametrize("name, arch_key", [("tiny-sd2", "cond"), ("tiny-sdxl", "embedder")])
def test_yaml_registers_a_small_open_clip(tiny_checkpoint, name, arch_key):
    """A small OpenCLIP tower: an open_clip model config beside the checkpoint, registered by the yaml itself."""
    from scal_sdt.host.checkpoint import configs_from_yaml
    from scal_sdt.host.ldm_yaml import OPEN_CLIP_REGISTER

    ckpt = tiny_checkpoint(name)
    model = read_yaml(ckpt.with_suffix(".yaml"))
    p = model["params"]
    if arch_key == "cond":  # SD2 (ldm): the VAE's lossconfig slot, built before the cond stage
        hook, params = p["first_stage_config"]["params"]["lossconfig"], p["cond_stage_config"]["params"]
        sub = "text_encoder"
    else:  # SDXL (sgm): the sampler_config slot, built before the conditioner
        hook, params = p["sampler_config"], p["conditioner_config"]["params"]["emb_models"][1]["params"]
        sub = "text_encoder_2"
        clip_l = p["conditioner_config"]["params"]["emb_models"][0]["params"]["version"]
        assert Path(clip_l) == ckpt.with_name(f"{name}.text_encoder")
    assert hook["target"] == OPEN_CLIP_REGISTER
    path = Path(hook["params"]["path"])
    assert path.is_absolute() and path.parent == ckpt.with_name(f"{name}.{sub}") and path.is_file()
    assert params["arch"] == path.stem and params["version"] is None
    config = json.loads(path.read_text())
    assert config["text_cfg"]["width"] == 64 and config["text_cfg"]["heads"] == 4
    texts = configs_from_yaml(ckpt.with_suffix(".yaml")).text_configs
    assert (texts[-1].hidden_size, texts[-1].num_hidden_layers, texts[-1].num_attention_heads) == (64, 3, 4)


def test_stock_sizes_keep_stock_names(tmp_path):
    """Real-size encoders keep openai/clip-vit-large-patch14, ViT-H-14, ViT-bigG-14 and no files are written."""
    from scal_sdt.host.families import SD1, SD2, SDXL
    from scal_sdt.host.ldm_yaml import text_encoder_files
    from scal_sdt.host.tiny import clip_l_config, open_clip_config

    clip_l = SimpleNamespace(config=clip_l_config(768, 12, 12))
    h = SimpleNamespace(config=open_clip_config(1024, 24, 16, 1024))
    big_g = SimpleNamespace(config=open_clip_config(1280, 32, 20, 1280))
    for family, encoders in ((SD1, [clip_l]), (SD2, [h]), (SDXL, [clip_l, big_g])):
        stub = SimpleNamespace(family=family, text_encoders=encoders)
        assert text_encoder_files(stub, tmp_path / "m.yaml") == {}, family.name
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- real WebUI
def test_files_in_webui_python(webui_install, tiny_checkpoint):
    """In the WebUI's own venv (transformers 4.30, open_clip 2.20): our folder's tokenizer = open_clip's ids, its
    config is read, and our open_clip model config registers and builds the tower the checkpoint holds."""
    _, python = webui_install
    sd1, sd2 = tiny_checkpoint("tiny-sd1"), tiny_checkpoint("tiny-sd2")
    hook = read_yaml(sd2.with_suffix(".yaml"))["params"]["first_stage_config"]["params"]["lossconfig"]
    script = r"""
import json, sys
import open_clip
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTextConfig, CLIPTokenizer
folder, oc_json, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tok, ref = CLIPTokenizer.from_pretrained(folder, local_files_only=True), SimpleTokenizer()
bad = [p for p in prompts if tok(p, add_special_tokens=False)["input_ids"] != ref.encode(p)]
c = CLIPTextConfig.from_pretrained(folder, local_files_only=True)
open_clip.add_model_config(oc_json)
name = oc_json.rsplit("/", 1)[-1][:-5]
model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
print(json.dumps(dict(bad=bad, config=[c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.hidden_act],
                      open_clip=[model.token_embedding.weight.shape[1], len(model.transformer.resblocks),
                                 model.transformer.resblocks[0].attn.num_heads])))
"""
    prompts = json.dumps(PROMPTS + WEBUI_ONLY_PROMPTS)
    args = [str(sd1.with_name("tiny-sd1.text_encoder")), hook["params"]["path"], prompts]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    r = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True,
                       timeout=WEBUI_PYTHON_TIMEOUT_S, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == dict(bad=[], config=[32, 2, 2, "quick_gelu"], open_clip=[64, 3, 4])


def test_webui_lists_and_loads_our_checkpoint(webui, tiny_checkpoint):
    ckpt = tiny_checkpoint("tiny-sd1")
    short = sha256(ckpt)[:10]
    models = webui.get("/sdapi/v1/sd-models")
    ours = [m for m in models if Path(m["filename"]) == ckpt]
    assert len(ours) == 1, models
    m = ours[0]
    assert m["hash"] == short and m["title"] == f"{ckpt.name} [{short}]"
    assert Path(m["config"]) == ckpt.with_suffix(".yaml")  # our yaml is the one the WebUI used
    assert webui.get("/sdapi/v1/options")["sd_model_checkpoint"] == m["title"]
    assert "size mismatch" not in webui.log and "Traceback" not in webui.log, webui.log_tail()
    print(f"\nWebUI start-up {webui.startup_s:.1f} s, model loaded {webui.model_s:.1f} s later")


def test_txt2img_returns_an_image(webui, tiny_checkpoint):
    images, info = webui.txt2img(prompt="a red square")
    assert len(images) == 1
    size, mode, data = pixels(images[0])
    assert size == (64, 64) and mode == "RGB" and len(set(data)) > 1
    assert info["sd_model_hash"] == sha256(tiny_checkpoint("tiny-sd1"))[:10]
    assert info["seed"] == 1 and info["steps"] == 4 and (info["width"], info["height"]) == (64, 64)


def test_different_prompts_give_different_images(webui):
    a = pixels(webui.txt2img(prompt="a red square")[0][0])
    b = pixels(webui.txt2img(prompt="a blue circle")[0][0])
    assert a[2] != b[2], "the image does not depend on the prompt: the text encoder is not reaching the UNet"


def test_same_request_gives_the_same_image(webui):
    request = dict(prompt="a photo of a cat", negative_prompt="blurry", seed=1234, cfg_scale=5)
    first, again = (pixels(webui.txt2img(**request)[0][0]) for _ in range(2))
    assert first == again


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_small_open_clip_families_load_and_generate(webui_server, tiny_checkpoint, tmp_path_factory, name):
    """SD2 / SDXL with tiny OpenCLIP towers: the yaml registers the open_clip config; no WebUI patch. An empty
    Hugging Face cache (HF_HOME): nothing but the files beside the checkpoint is needed."""
    ckpt = tiny_checkpoint(name)
    empty_hf = tmp_path_factory.mktemp("empty-hf-home")
    server = webui_server(ckpt, env={"HF_HOME": str(empty_hf)}, name=f"webui-{name}")
    try:
        m = next(m for m in server.get("/sdapi/v1/sd-models") if Path(m["filename"]) == ckpt)
        assert server.get("/sdapi/v1/options")["sd_model_checkpoint"] == m["title"]
        a = pixels(server.txt2img(prompt="a red square")[0][0])
        b = pixels(server.txt2img(prompt="a blue circle")[0][0])
        again = pixels(server.txt2img(prompt="a red square")[0][0])
        assert a[0] == (64, 64) and a[2] != b[2] and a == again
        assert not list(empty_hf.rglob("models--*")), list(empty_hf.rglob("*"))  # (transformers writes version.txt)
        print(f"\n{name}: WebUI start-up {server.startup_s:.1f} s, model loaded {server.model_s:.1f} s later")
    finally:
        server.stop()


def test_nothing_written_into_webui_dir(webui, webui_install, webui_dir_snapshot):
    """--data-dir keeps config.json, cache.json, params.txt, outputs … out of WEBUI_DIR (run last in this file)."""
    after = webui_dir_files(webui_install[0])
    changed = sorted(k for k in after if webui_dir_snapshot.get(k) != after[k])
    assert changed == [], changed


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
