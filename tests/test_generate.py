"""`scal-sdt generate`: deterministic PNGs with the WebUI's parameters; embeddings from a folder by name."""
import torch
from PIL import Image

from scal_sdt import cli
from scal_sdt.textual_inversion.create import create_embedding


def pixels(path):
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_generate_uses_embeddings_by_name_and_is_deterministic(tmp_path, tiny_hosts, capsys):
    sd1, sd2 = tiny_hosts("tiny-sd1"), tiny_hosts("tiny-sd2")
    emb_dir = tmp_path / "emb"
    create_embedding(sd1, "shiny", 2, "sparkling gold", emb_dir)
    create_embedding(sd2, "wide", 1, "red", emb_dir)  # another model's width: skipped and named
    base = ["generate", "--model", "tiny-sd1", "--steps", "3", "--embeddings", str(emb_dir), "--n", "2", "--seed", "5"]
    assert cli.main(base + ["--prompt", "a photo of shiny", "--out", str(tmp_path / "a")]) == 0
    assert cli.main(base + ["--prompt", "a photo of shiny", "--out", str(tmp_path / "b")]) == 0
    assert cli.main(base + ["--prompt", "a photo of cat", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "wide" in err and "skipped" in err
    a, b, c = (sorted((tmp_path / d).glob("*.png")) for d in "abc")
    assert [p.name for p in a] == ["00000-5.png", "00001-6.png"]  # the WebUI's NUMBER-SEED
    assert pixels(a[0]) == pixels(b[0]) and pixels(a[0]) != pixels(a[1])  # same seed same image; seed + i differs
    assert pixels(a[0]) != pixels(c[0])  # the embedding's name changes the picture
    with Image.open(a[0]) as im:
        params = im.text["parameters"]
    assert params.startswith("a photo of shiny\nSteps: 3, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 64x64")
    # the image equals the host's own sampler with the embedding's vectors
    from scal_sdt.textual_inversion.format import load_embedding

    vec = load_embedding(emb_dir / "shiny.safetensors").for_encoders(["clip_l"])
    direct = sd1.sample(["a photo of shiny"], steps=3, seed=5, width=64, height=64, embeddings={"shiny": vec})[0]
    assert max(abs(x - y) for x, y in zip(direct.tobytes(), pixels(a[0]))) <= 2
    assert torch.is_tensor(vec["clip_l"])


def test_generate_numbers_on_and_never_overwrites(tmp_path):
    """A second run into the same folder numbers on from the largest number there, as the WebUI does: the same
    seeds twice give 8 distinct files, the first 4 untouched."""
    from scal_sdt.files import next_number

    out = tmp_path / "out"
    assert next_number(out) == 0  # a missing folder
    base = ["generate", "--model", "tiny-sd1", "--steps", "2", "--n", "4", "--prompt", "a red star", "--out", str(out)]
    assert cli.main(base) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert sorted(first) == ["00000-0.png", "00001-1.png", "00002-2.png", "00003-3.png"]
    assert cli.main(base) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 8 and names[4:] == ["00004-0.png", "00005-1.png", "00006-2.png", "00007-3.png"]
    assert all((out / name).read_bytes() == data for name, data in first.items())
    (out / "00041-9.png").write_bytes(b"x")  # a gap and other files: on from the largest
    (out / "notes.txt").write_text("x")
    assert next_number(out) == 42


def test_generate_needs_a_prompt(tmp_path, capsys):
    assert cli.main(["generate", "--prompt", "", "--out", str(tmp_path)]) == 2
    assert "prompt" in capsys.readouterr().err


def test_generate_takes_kohya_loras_named_the_diffusers_way_with_text_encoder_layers(tmp_path, capsys):
    """Most kohya SD1/SD2 LoRAs name the UNet's layers as diffusers does (lora_unet_down_blocks_0_…) and carry
    text-encoder layers (lora_te_text_model_encoder_layers_0_…; SDXL lora_te1_/lora_te2_): `generate --lora` takes
    them, each key on the same layer as its original-layout name, the text layers changing the prompt's encoding."""
    from safetensors.torch import save_file

    from scal_sdt.host.standalone import load_host
    from scal_sdt.lora_layers.network import load_kohya

    host = load_host("tiny-sd1", device="cpu")
    unet_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    te_key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    targets = host.lora_targets()
    assert targets[unet_key] is host.unet_modules()["input_blocks.1.1.transformer_blocks.0.attn2.to_k"]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key in (unet_key, te_key):
        layer = targets[key]
        sd[f"{key}.lora_down.weight"] = torch.randn(2, layer.in_features, generator=g)
        sd[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, 2, generator=g)
        sd[f"{key}.alpha"] = torch.tensor(2.0)
    path = tmp_path / "third-party.safetensors"
    save_file(sd, str(path))
    with torch.no_grad():
        plain = host.encode_prompts(["a red circle"]).context
        lora = load_kohya(path, targets).attach()
        assert not torch.allclose(host.encode_prompts(["a red circle"]).context, plain)
        lora.detach()
        assert torch.equal(host.encode_prompts(["a red circle"]).context, plain)
    base = ["generate", "--model", "tiny-sd1", "--steps", "3", "--n", "1", "--seed", "5", "--prompt", "a red circle"]
    assert cli.main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert cli.main(base + ["--lora", str(path), "--out", str(tmp_path / "lora")]) == 0
    plain_png, lora_png = (next((tmp_path / d).glob("*.png")) for d in ("plain", "lora"))
    assert pixels(plain_png) != pixels(lora_png)
