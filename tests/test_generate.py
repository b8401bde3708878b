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
    assert [p.name for p in a] == ["000005.png", "000006.png"]
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


def test_generate_needs_a_prompt(tmp_path, capsys):
    assert cli.main(["generate", "--prompt", "", "--out", str(tmp_path)]) == 2
    assert "prompt" in capsys.readouterr().err
