"""Aesthetic embeddings: the normalised mean CLIP image embedding of a folder, in the existing extension's .pt format
(weights_only) and .safetensors, with the family's encoder; it captures the folder's look (the toy CLIP places a
folder of red pictures nearer the text "red" than "blue"); corrupt images are skipped and listed."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from scal_sdt.aesthetic.config import AestheticEmbeddingConfig
from scal_sdt.aesthetic.make import (encoders_for, family_of, load_aesthetic_embedding, make_aesthetic_embedding)


def folder_of(tmp_path, name, colour, n=6):
    from scal_sdt.toy_world.world import Scene, render

    d = tmp_path / name
    d.mkdir()
    shapes = ["circle", "square", "star", "triangle", "cross", "hexagon"]
    for i in range(n):
        render(Scene(shapes[i % 6], colour, "white", "large", (0.5, 0.5))).save(d / f"{i}.png")
    return d


def test_the_embedding_captures_the_folders_look(tmp_path):
    from scal_sdt.clip_models import load_open_clip

    red, blue = folder_of(tmp_path, "red", "red"), folder_of(tmp_path, "blue", "blue")
    (red / "broken.png").write_bytes(b"nope")
    out = tmp_path / "ae"
    r = make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(red), name="reds", out=str(out)))
    assert r.images == 6 and [p for p, _ in r.skipped] == [str(red / "broken.png")]
    make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(blue), name="blues", out=str(out)))
    import webui_rules

    webui_rules.check_pt(out / "reds.pt")  # the WebUI's safe.py accepts it (legacy serialization)
    pt = torch.load(out / "reds.pt", weights_only=True)  # the existing extension's file, safe to load
    assert pt.shape == (1, 64) and pt.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(load_aesthetic_embedding(out / "reds.safetensors")["clip_l"], pt)
    assert (out / "reds.preview.png").exists()
    clip = load_open_clip("toy")
    with torch.no_grad():
        text = clip.model.encode_text(clip.tokenizer(["red", "blue"]))
    text = text / text.norm(dim=-1, keepdim=True)
    reds, blues = pt @ text.T, load_aesthetic_embedding(out / "blues.pt")["clip_l"] @ text.T
    assert reds[0, 0] > reds[0, 1] and blues[0, 1] > blues[0, 0]
    with pytest.raises(FileExistsError, match="reds"):
        make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(red), name="reds", out=str(out)))


def test_the_family_picks_the_encoders(tmp_path):
    from scal_sdt.host.checkpoint import save_checkpoint
    from scal_sdt.host.standalone import load_components

    assert encoders_for(AestheticEmbeddingConfig(images="x", name="a")) == [("clip_l", "toy")]
    assert encoders_for(AestheticEmbeddingConfig(images="x", name="a", model="tiny-sd2")) == [
        ("clip_h", "ViT-H-14/laion2b_s32b_b79k")]
    assert [k for k, _ in encoders_for(AestheticEmbeddingConfig(images="x", name="a", model="tiny-sdxl"))] == [
        "clip_l", "clip_g"]
    with pytest.raises(ValueError, match="sdxl needs 2"):
        encoders_for(AestheticEmbeddingConfig(images="x", name="a", model="tiny-sdxl", clip="toy"))
    path = save_checkpoint(load_components("tiny-sdxl"), tmp_path / "x.safetensors")
    assert family_of(str(path)).name == "sdxl"  # from the file's keys, without loading it


def test_a_missing_encoder_is_named_with_how_to_get_it(tmp_path):
    red = folder_of(tmp_path, "red", "red", n=1)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(red), name="x", model="tiny-sd1",
                                                          out=str(tmp_path / "o")))
    bad = tmp_path / "bad.pt"
    torch.save({"not": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match=r"\[1, dim\] tensor"):
        load_aesthetic_embedding(bad)


def toy_gradient():
    from scal_sdt.aesthetic.gradient import AestheticGradient
    from scal_sdt.clip_models import load_open_clip
    from scal_sdt.host.standalone import load_host
    from scal_sdt.toy_world.clip_model import token_ids

    host = load_host("toy", device="cpu")
    clip = load_open_clip("toy")
    te = host.components.text_encoders[0]
    return host, te, AestheticGradient(host, te, clip.model.text_projection, token_ids)


def test_aesthetic_gradient_on_the_toy_model(tmp_path):
    """Weight 0 is the host's conditioning bit for bit; with weight > 0 the tuned text tower's pooled embedding moves
    towards the aesthetic embedding (and the blend differs); the text encoder is put back bit for bit; the same
    settings again come from the cache."""
    from scal_sdt.aesthetic.gradient import AestheticSettings

    red = folder_of(tmp_path, "red", "red")
    make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(red), name="reds", out=str(tmp_path / "ae")))
    emb = load_aesthetic_embedding(tmp_path / "ae" / "reds.safetensors")["clip_l"]
    host, te, ag = toy_gradient()
    prompts = ["a blue star on a white background"]
    before = {k: v.clone() for k, v in te.state_dict().items()}
    with torch.no_grad():
        plain = host.encode_prompts(prompts)
    off = ag.conditioning(prompts, emb, AestheticSettings(weight=0.0))
    assert torch.equal(off.context, plain.context)

    cos0 = ag.cosine(prompts, emb).item()
    s = AestheticSettings(weight=0.5, steps=10, lr=1e-3)
    on = ag.conditioning(prompts, emb, s)
    assert (on.context - plain.context).abs().max() > 1e-3
    assert all(torch.equal(before[k], v) for k, v in te.state_dict().items())  # restored exactly
    assert ag.cosine(prompts, emb).item() == pytest.approx(cos0, abs=1e-6)
    before_tuning, after_tuning = ag.last_cosines  # the tuned tower (the blend's source) was nearer the target
    assert before_tuning == pytest.approx(cos0, abs=1e-5) and after_tuning > before_tuning + 0.01
    again = ag.conditioning(prompts, emb, s)
    assert ag.hits == 1 and again is on


def test_generate_with_an_aesthetic_embedding(tmp_path, capsys):
    """`scal-sdt generate --aesthetic NAME`: weight 0 gives the plain picture bit for bit, a weight changes it, the
    second image reuses the tuned conditioning, the infotext carries the extension's keys."""
    import numpy as np

    from scal_sdt.cli import main

    red = folder_of(tmp_path, "red", "red")
    ae = tmp_path / "ae"
    assert main(["make-aesthetic-embedding", "--images", str(red), "--name", "reds", "--out", str(ae)]) == 0
    base = ["generate", "--prompt", "a blue star on a white background", "--n", "2", "--seed", "4", "--steps", "8",
            "--aesthetic-dir", str(ae)]
    pix = lambda d: np.asarray(Image.open(d / "000004.png"), dtype=np.float32)  # noqa: E731
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert main(base + ["--out", str(tmp_path / "zero"), "--aesthetic", "reds", "--aesthetic-weight", "0"]) == 0
    assert np.array_equal(pix(tmp_path / "plain"), pix(tmp_path / "zero"))
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "on"), "--aesthetic", "reds", "--aesthetic-weight", "0.5",
                        "--aesthetic-steps", "10", "--aesthetic-lr", "0.001"]) == 0
    assert np.abs(pix(tmp_path / "on") - pix(tmp_path / "plain")).mean() > 0.5
    assert "reused for 1 of 2 images" in capsys.readouterr().err
    info = Image.open(tmp_path / "on" / "000004.png").text["parameters"]
    assert "Aesthetic weight: 0.5" in info and "Aesthetic embedding: reds" in info
    assert main(base + ["--out", str(tmp_path / "x"), "--aesthetic", "nothere"]) == 2


def test_aesthetic_and_hypernetwork_apply_together(tmp_path):
    """The guide's recipe for an artist's style: a hypernetwork and an aesthetic embedding in one generation; each
    changes the picture and together they give a third one."""
    import numpy as np

    from scal_sdt.cli import main
    from scal_sdt.hypernetwork.format import save_hypernetwork
    from scal_sdt.hypernetwork.module import create_hypernetwork

    red = folder_of(tmp_path, "red", "red")
    ae = tmp_path / "ae"
    assert main(["make-aesthetic-embedding", "--images", str(red), "--name", "reds", "--out", str(ae)]) == 0
    hn = save_hypernetwork(create_hypernetwork("style", [64], "1, 2, 1", "relu", "XavierNormal", seed=3),
                           tmp_path / "style.pt")
    base = ["generate", "--prompt", "a blue star on a white background", "--seed", "4", "--steps", "8",
            "--aesthetic-dir", str(ae)]
    runs = {"plain": [], "hn": ["--hypernetwork", str(hn)],
            "ae": ["--aesthetic", "reds", "--aesthetic-weight", "0.5", "--aesthetic-steps", "10",
                   "--aesthetic-lr", "0.001"]}
    runs["both"] = runs["hn"] + runs["ae"]
    pix = {}
    for name, extra in runs.items():
        assert main(base + ["--out", str(tmp_path / name)] + extra) == 0
        pix[name] = np.asarray(Image.open(tmp_path / name / "000004.png"), dtype=np.float32)
    diff = lambda a, b: np.abs(pix[a] - pix[b]).mean()  # noqa: E731
    assert diff("hn", "plain") > 0.5 and diff("ae", "plain") > 0.5
    assert diff("both", "hn") > 0.5 and diff("both", "ae") > 0.5
