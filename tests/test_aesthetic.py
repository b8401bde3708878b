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
    stored = load_aesthetic_embedding(out / "reds.safetensors")
    assert torch.allclose(stored.rows["clip_l"], pt)
    assert torch.equal(stored.projections["clip_l"], load_open_clip("toy").model.text_projection.detach())
    assert (out / "reds.preview.png").exists()
    clip = load_open_clip("toy")
    with torch.no_grad():
        text = clip.model.encode_text(clip.tokenizer(["red", "blue"]))
    text = text / text.norm(dim=-1, keepdim=True)
    reds, blues = pt @ text.T, load_aesthetic_embedding(out / "blues.pt").rows["clip_l"] @ text.T
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


def toy_gradient(tmp_path, model="toy"):
    """The toy model with an embedding of red pictures; tiny-sdxl with a random one (no CLIP of its widths)."""
    from scal_sdt.aesthetic.use import standalone_gradient
    from scal_sdt.files import save_safetensors
    from scal_sdt.host.standalone import load_host

    host = load_host(model, device="cpu")
    if model == "toy":
        red = folder_of(tmp_path, "red", "red")
        make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(red), name="reds", out=str(tmp_path / "ae")))
    else:
        g = torch.Generator().manual_seed(0)
        l_width = host.components.text_encoders[0].config.hidden_size
        g_dim = host.components.text_encoders[1].config.projection_dim
        rows = {"clip_l": torch.randn(1, 24, generator=g), "clip_l.text_projection": torch.randn(l_width, 24, generator=g),
                "clip_g": torch.randn(1, g_dim, generator=g)}
        (tmp_path / "ae").mkdir()
        save_safetensors({k: v / v.norm(dim=-1, keepdim=True) if "." not in k else v for k, v in rows.items()},
                         tmp_path / "ae" / "reds.safetensors")
    gradient, rows = standalone_gradient(host, tmp_path / "ae" / "reds.safetensors", model)
    return host, gradient, rows


def test_aesthetic_gradient_on_the_toy_model(tmp_path):
    """Weight 0 is the host's conditioning bit for bit; with weight > 0 the tuned text tower's pooled embedding moves
    towards the aesthetic embedding (and the blend differs); the text encoder is put back bit for bit; the same
    settings again come from the cache."""
    from scal_sdt.aesthetic.gradient import AestheticSettings

    host, ag, rows = toy_gradient(tmp_path)
    te = host.components.text_encoders[0]
    prompts = ["a blue star on a white background"]
    before = {k: v.clone() for k, v in te.state_dict().items()}
    with torch.no_grad():
        plain = host.encode_prompts(prompts)
    off = ag.conditioning(prompts, rows, AestheticSettings(weight=0.0))
    assert torch.equal(off.context, plain.context)

    cos0 = ag.cosine(prompts, rows).item()
    s = AestheticSettings(weight=0.5, steps=10, lr=1e-3)
    on = ag.conditioning(prompts, rows, s)
    assert (on.context - plain.context).abs().max() > 1e-3
    assert all(torch.equal(before[k], v) for k, v in te.state_dict().items())  # restored exactly
    assert ag.cosine(prompts, rows).item() == pytest.approx(cos0, abs=1e-6)
    before_tuning, after_tuning = ag.last_cosines  # the tuned tower (the blend's source) was nearer the target
    assert before_tuning == pytest.approx(cos0, abs=1e-5) and after_tuning > before_tuning + 0.01
    again = ag.conditioning(prompts, rows, s)
    assert ag.hits == 1 and again is on


def test_compact_adam_is_adam_and_tunes_half_precision_weights(tmp_path):
    """On fp32 weights CompactAdam takes torch's Adam steps; on fp16 weights (where torch's Adam keeps fp16 moments
    and the cosine's gradients underflow) it still moves the tower towards the embedding, and restores it."""
    from scal_sdt.aesthetic.gradient import AestheticSettings, CompactAdam, tuned

    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    ours, ref = CompactAdam(list(a.parameters()), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    x = torch.randn(16, 8)
    for _ in range(5):
        for m, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))

    host, ag, rows = toy_gradient(tmp_path)
    te = host.components.text_encoders[0].half()
    before = {k: v.clone() for k, v in te.state_dict().items()}
    prompts = ["a blue star on a white background"]
    with tuned(ag.towers, prompts, rows, AestheticSettings(steps=10, lr=1e-3)) as (first, last):
        assert next(te.parameters()).dtype == torch.float16
    assert last > first + 0.01
    assert all(torch.equal(before[k], v) for k, v in te.state_dict().items())


def test_sdxl_tunes_both_towers_towards_their_rows(tmp_path):
    """SDXL: a row per tower (CLIP-L with the stored projection, OpenCLIP-G with its own), both tuned; the pooled
    vector changes too; batch-wise off tunes each distinct prompt on its own (same shapes, other values)."""
    from scal_sdt.aesthetic.gradient import AestheticSettings, tuned

    host, ag, rows = toy_gradient(tmp_path, "tiny-sdxl")
    assert [t.key for t in ag.towers] == ["clip_l", "clip_g"] and set(rows) == {"clip_l", "clip_g"}
    prompts = ["a blue star", "a green circle"]
    s = AestheticSettings(weight=0.5, steps=8, lr=1e-3)
    per_tower = []
    for tower in ag.towers:
        with tuned([tower], prompts, rows, s) as (first, last):
            per_tower.append(last - first)
    assert min(per_tower) > 0.005
    with torch.no_grad():
        plain = host.encode_prompts(prompts, size=(64, 64))
    on = ag.conditioning(prompts, rows, s, size=(64, 64))
    assert (on.pooled - plain.pooled).abs().max() > 1e-4 and torch.equal(on.time_ids, plain.time_ids)
    each = ag.conditioning(prompts, rows, AestheticSettings(weight=0.5, steps=8, lr=1e-3, batchwise=False),
                           size=(64, 64))
    assert each.context.shape == on.context.shape and not torch.allclose(each.context, on.context)


def test_blend_walks_the_webuis_conditioning_structures():
    """The WebUI's conditioning is a tree (MulticondLearnedConditioning → ComposableScheduledPromptConditioning →
    ScheduledPromptConditioning(end_at_step, cond) with SDXL's dict cond); blend mixes every float tensor and keeps
    the rest."""
    from collections import namedtuple

    from scal_sdt.aesthetic.gradient import blend

    Scheduled = namedtuple("Scheduled", ["end_at_step", "cond"])

    class Composable:
        def __init__(self, schedules, weight):
            self.schedules, self.weight = schedules, weight

    def tree(v):
        return Composable([Scheduled(10, {"crossattn": torch.full((2, 3), v), "vector": torch.full((4,), v)})], 1.0)

    out = blend([tree(0.0)], [tree(1.0)], 0.25)[0]
    assert out.weight == 1.0 and out.schedules[0].end_at_step == 10
    assert torch.allclose(out.schedules[0].cond["crossattn"], torch.full((2, 3), 0.25))
    assert torch.allclose(out.schedules[0].cond["vector"], torch.full((4,), 0.25))


def test_a_file_for_another_family_or_encoder_is_refused_by_name(tmp_path):
    from scal_sdt.aesthetic.use import standalone_gradient
    from scal_sdt.files import save_safetensors
    from scal_sdt.host.standalone import load_host

    host = load_host("toy", device="cpu")
    save_safetensors({"clip_h": torch.ones(1, 64)}, tmp_path / "sd2look.safetensors")
    with pytest.raises(ValueError, match="'sd2look' has no clip_l row.*another model family"):
        standalone_gradient(host, tmp_path / "sd2look.safetensors", "toy")
    save_safetensors({"clip_l": torch.ones(1, 32)}, tmp_path / "narrow.safetensors")
    with pytest.raises(ValueError, match="'narrow' is 32 wide.*embeds in 64"):
        standalone_gradient(host, tmp_path / "narrow.safetensors", "toy")


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
    pix = lambda d: np.asarray(Image.open(d / "00000-4.png"), dtype=np.float32)  # noqa: E731
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert main(base + ["--out", str(tmp_path / "zero"), "--aesthetic", "reds", "--aesthetic-weight", "0"]) == 0
    assert np.array_equal(pix(tmp_path / "plain"), pix(tmp_path / "zero"))
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "on"), "--aesthetic", "reds", "--aesthetic-weight", "0.5",
                        "--aesthetic-steps", "10", "--aesthetic-lr", "0.001"]) == 0
    assert np.abs(pix(tmp_path / "on") - pix(tmp_path / "plain")).mean() > 0.5
    assert "reused for 1 of 2 images" in capsys.readouterr().err
    info = Image.open(tmp_path / "on" / "00000-4.png").text["parameters"]
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
        pix[name] = np.asarray(Image.open(tmp_path / name / "00000-4.png"), dtype=np.float32)
    diff = lambda a, b: np.abs(pix[a] - pix[b]).mean()  # noqa: E731
    assert diff("hn", "plain") > 0.5 and diff("ae", "plain") > 0.5
    assert diff("both", "hn") > 0.5 and diff("both", "ae") > 0.5


def original_extension_conditioning(host, projection, row, texts, weight, steps, lr):
    """The aesthetic-gradients extension's algorithm (2624e5dd, ``aesthetic_clip.py``) as it was written: a deep
    copy of the CLIP text model, torch's Adam on all its weights towards the embedding, the texts re-encoded by the
    copy and lerped into the plain encoding by ``weight`` — for every text the WebUI encodes, the negative prompt
    too. (Tokens as it meant them: BOS, prompt, EOS. In A1111 1.8 its hook receives chunks that already hold BOS and
    EOS and it adds another BOS; see ``test_ours_moves_the_look_as_far_as_the_original_extension``.)"""
    import copy

    from scal_sdt.aesthetic.gradient import unit
    from scal_sdt.host.families import EOS_ID
    from scal_sdt.host.tokenizer import clip_token_ids

    ids = clip_token_ids(texts, EOS_ID)
    model = copy.deepcopy(host.components.text_encoders[0]).requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    target = unit(row.float().reshape(1, -1))
    with torch.enable_grad():
        for _ in range(steps):
            pooled = model(input_ids=ids).pooler_output
            loss = -(unit(pooled @ projection) @ target.T).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        plain = host.encode_prompts(texts).context
        return plain * (1 - weight) + model(input_ids=ids).last_hidden_state * weight


def test_ours_moves_the_look_as_far_as_the_original_extension(tmp_path):
    """At the extension's defaults (weight 0.9, 5 steps, lr 1e-4), pictures drawn with our aesthetic gradient are at
    least as near the style (toy-CLIP cosine of the pictures to the embedding) as with the extension's algorithm,
    same prompts and seeds, and keep their colour as well.

    Measured in A1111 1.8 (bench/originals.py, 16 prompts, DDIM 20): none 0.438, the original 0.513, ours 0.453.
    The original's lead there is not its gradient steps: its hook adds a BOS to chunks that already start with one,
    so the encoding it blends in at 0.9 is shifted by one token. On our host, same 16 prompts: none 0.427; that
    shifted re-encoding alone, with no tuning at all, 0.478 (whatever the embedding); with its 5 steps 0.492; its
    algorithm with the tokens it meant 0.426 (tuning the negative prompt as well takes the look back: positive
    prompt only 0.444); ours 0.444. So it is compared here as written, with the tokens it meant."""
    from scal_sdt.aesthetic.gradient import AestheticSettings
    from scal_sdt.aesthetic.make import mean_embedding
    from scal_sdt.aesthetic.use import projection_for, standalone_gradient
    from scal_sdt.clip_models import load_open_clip
    from scal_sdt.host.base import Conditioning
    from scal_sdt.host.standalone import load_host
    from scal_sdt.toy_world.build import JUDGE, PRETRAINED
    from scal_sdt.toy_world.concepts import make_unnamed_style_set
    from scal_sdt.toy_world.judge import Judge
    from scal_sdt.toy_world.quality import prompt_set, sentence

    make_unnamed_style_set(tmp_path / "checks", 8, seed=1)
    make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(tmp_path / "checks"), name="checks",
                                                      out=str(tmp_path / "ae")))
    host = load_host("toy", device="cpu")
    path = tmp_path / "ae" / "checks.safetensors"
    ours, rows = standalone_gradient(host, path, "toy")
    projection = projection_for("clip_l", load_aesthetic_embedding(path), "", "sd1", toy=True)
    s = AestheticSettings(weight=0.9, steps=5, lr=1e-4)
    triples = prompt_set(4, seed=31)
    prompts = [sentence(*t) for t in triples]

    def original(ps, negative, embeddings, size):
        texts = list(ps) + [negative] * len(ps)
        halves = [original_extension_conditioning(host, projection, rows["clip_l"], half, s.weight, s.steps, s.lr)
                  for half in (texts[:len(ps)], texts[len(ps):])]  # the WebUI encodes each side in its own call
        return Conditioning(torch.cat(halves), None, None)

    def ours_(ps, negative, embeddings, size):
        return ours.conditioning(ps, rows, s, size, negative=negative, embeddings=embeddings)

    clip = load_open_clip("toy", "cpu")
    judge = Judge.load(PRETRAINED / JUDGE)
    style = rows["clip_l"].float().reshape(-1)
    style = style / style.norm()
    scores = {}
    for name, encode in (("none", None), ("original", original), ("ours", ours_)):
        images = host.sample(prompts, steps=10, cfg_scale=5, seed=100, **({"encode": encode} if encode else {}))
        with torch.no_grad():
            feats = torch.cat([mean_embedding(clip, [im], 1, "cpu") for im in images])
        colour = sum(said[1] == t[1] for said, t in zip(judge.predict(images), triples)) / len(triples)
        scores[name] = (float((feats @ style).mean()), colour)
    assert scores["ours"][0] > scores["none"][0], scores
    assert scores["ours"][0] >= scores["original"][0], scores
    assert scores["ours"][1] >= scores["original"][1], scores  # measured: style 0.344 / 0.337 / 0.325 (none)
