"""APT (DreamArtist-style): CFG inside training on the doubled batch, the CFG schedules, mask weights, the
reconstruction and discriminator losses' gradients, both files written and resumable, presets."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

import webui_rules
from recording import RecordingReporter as Collect
from scal_sdt.demo_data import make_concept_folder
from scal_sdt.textual_inversion.apt import AptJob, cfg_scales, guided
from scal_sdt.textual_inversion.config import EmbeddingConfig, apply_apt_preset
from scal_sdt.textual_inversion.create import init_vectors
from scal_sdt.textual_inversion.format import load_embedding
from scal_sdt.textual_inversion.trainer import train_embedding


def config(tmp_path, family="tiny-sd1", **kw):
    data = tmp_path / "data"
    if not data.exists():
        make_concept_folder(data, count=4)
    base = dict(model=family, data=str(data), name="zq", mode="apt", steps=3, lr="0.01", out=str(tmp_path / "emb"),
                log_dir=str(tmp_path / "run"), save_every=0, preview_every=0, template="subject", neg_vectors=2)
    base.update(kw)
    return EmbeddingConfig(**base)


def job_for(cfg, host, tmp_path, disc=None, unet_lora=None):
    from scal_sdt.training.run_setup import prepare_data

    dataset, _ = prepare_data(cfg, host, Collect(), cfg.resolution or host.native_resolution)
    params = lambda text, n: {k: torch.nn.Parameter(v.clone()) for k, v in init_vectors(host, text, n).items()}  # noqa
    return AptJob(cfg, host, dataset, params("*", cfg.vectors), ["a photo of [name]"], tmp_path / "run", None,
                  unet_lora=unet_lora, neg_vectors=params("", cfg.neg_vectors), discriminator=disc)


def test_guided_is_cfg():
    e_neg, e_pos = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    s = torch.tensor([1.5, 3.0])
    out = guided(e_neg, e_pos, s)
    assert torch.allclose(out[0], e_neg[0] + 1.5 * (e_pos[0] - e_neg[0]))
    assert torch.allclose(out[1], e_neg[1] + 3.0 * (e_pos[1] - e_neg[1]))


def test_the_doubled_batch_equals_two_separate_calls(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    job = job_for(config(tmp_path), host, tmp_path)
    nb = job.noised_batch()
    pos, neg = job.prompt_pairs(nb.batch.captions)
    assert pos[0] == "a photo of zq" and neg[0] == "zq-neg"
    scale = torch.full((nb.x_t.shape[0],), 2.5)
    with torch.no_grad():
        cond_pos = host.encode_prompts(pos, job.embeddings(), size=nb.size)
        cond_neg = host.encode_prompts(neg, job.embeddings(), size=nb.size)
        doubled = job.guided_prediction(nb.x_t, nb.t, cond_neg, cond_pos, scale)
        e_pos, e_neg = host.predict(nb.x_t, nb.t, cond_pos), host.predict(nb.x_t, nb.t, cond_neg)
    assert torch.allclose(doubled, e_neg + 2.5 * (e_pos - e_neg), atol=5e-4)  # batched vs single: float noise
    assert not torch.allclose(cond_pos.context, cond_neg.context)  # NAME-neg really is another embedding


def test_cfg_schedules():
    t = torch.tensor([0, 499, 999])
    assert torch.allclose(cfg_scales(t, 1000, 2.0, 4.0, "linear"), torch.tensor([2.0, 2.0 + 2 * 499 / 999, 4.0]))
    cos = cfg_scales(t, 1000, 2.0, 4.0, "cos")
    assert cos[0] == pytest.approx(2.0) and cos[2] == pytest.approx(4.0)
    assert cos[1] == pytest.approx(2.0 + 2 * (1 - math.cos(math.pi * 499 / 999)) / 2, abs=1e-5)
    assert cfg_scales(t, 1000, 2.0, 4.0, "cos2")[1] < cos[1]
    drawn = cfg_scales(torch.zeros(1000, dtype=torch.long), 1000, 1.5, 3.0, "none", torch.Generator().manual_seed(0))
    assert 1.5 <= drawn.min() and drawn.max() <= 3.0 and drawn.std() > 0.3
    assert torch.equal(cfg_scales(t, 1000, 3.0, 3.0, "none"), torch.full((3,), 3.0))


def test_mask_weights_map_the_attention_map(tmp_path):
    """NAME_att.png (DreamArtist's name) is read as the mask; 0..1 maps to mask_weights lo..hi before the mean-1
    normalisation: with 1-3 the white half weighs 3x the black half."""
    from PIL import Image

    from scal_sdt.training.dataset import LatentDataset
    from scal_sdt.training.images import scan_folder

    folder = tmp_path / "att"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "a.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    mask.save(folder / "a_att.png")
    scan = scan_folder(folder)
    assert len(scan.items) == 1 and scan.items[0].mask_path.name == "a_att.png"

    def moments(pixels):
        return torch.zeros(pixels.shape[0], 4, 8, 8), torch.zeros(pixels.shape[0], 4, 8, 8)

    for rng, ratio in (((0.0, 1.0), math.inf), ((1.0, 3.0), 3.0)):
        ds = LatentDataset(scan.items, resolution=64, buckets=False, encode_moments=moments, mask_range=rng)
        w = ds.next_batch().weights[0, 0]
        assert w.mean() == pytest.approx(1.0)
        left, right = w[:, :3].mean(), w[:, 5:].mean()
        assert (left == 0 and ratio == math.inf) or right / left == pytest.approx(ratio, rel=1e-5)
    with pytest.raises(ValueError, match="mask_weights"):
        EmbeddingConfig(name="x", mask_weights="3")


def test_reconstruction_and_discriminator_gradients_reach_both_embeddings_only(tmp_path, tiny_hosts):
    from scal_sdt.textual_inversion.discriminator import ClipScore

    host = tiny_hosts("tiny-sd1")
    torch.manual_seed(0)
    save_file({"weight": torch.randn(1, 64), "bias": torch.zeros(1)}, str(tmp_path / "head.safetensors"))
    disc = ClipScore.load("toy", str(tmp_path / "head.safetensors"))
    cfg = config(tmp_path, rec_weight=1.0, rec_crop=4, disc_clip="toy", disc_head=str(tmp_path / "head.safetensors"),
                 disc_mode="replace")
    job = job_for(cfg, host, tmp_path, disc)
    loss = job.loss()  # the diffusion loss is replaced: only reconstruction + discriminator remain
    loss.backward()
    for vectors in (job.vectors, job.neg_vectors):
        for v in vectors.values():
            assert v.grad is not None and v.grad.abs().sum() > 0
    frozen = [p for m in host.components.modules().values() for p in m.parameters()]
    frozen += list(disc.parameters())
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_apt_writes_both_files_the_webui_accepts_and_resumes(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    first = train_embedding(config(tmp_path, steps=4, save_every=2, ema_decay=0.5), host, Collect())
    pos, neg = tmp_path / "emb" / "zq.safetensors", tmp_path / "emb" / "zq-neg.safetensors"
    assert first.final_path == pos and pos.exists() and neg.exists()
    for path, name, n in ((pos, "zq", 1), (neg, "zq-neg", 2)):
        seen = webui_rules.load_embedding_file(path)
        assert seen is not None and seen.name == name and seen.vectors == n
    a = load_embedding(neg).for_encoders(["clip_l"])["clip_l"]
    assert a.abs().sum() > 0  # started at zeros, learned
    with pytest.raises(FileExistsError, match="zq"):
        train_embedding(config(tmp_path, steps=4), host, Collect())
    again = train_embedding(config(tmp_path, steps=6, save_every=2, ema_decay=0.5, resume=True), host, Collect())
    assert again.step == 6


def test_apt_presets_fill_in_what_the_user_did_not_give():
    cfg = apply_apt_preset(EmbeddingConfig(name="x", apt_preset="dreamartist", lr="0.001"), {"lr"})
    assert (cfg.mode, cfg.vectors, cfg.neg_vectors, cfg.cfg_scale, cfg.lr) == ("apt", 3, 6, "3-5", "0.001")
    with pytest.raises(ValueError, match="cfg_scale"):
        EmbeddingConfig(name="x", mode="apt", cfg_scale="5-3")
    with pytest.raises(ValueError, match="disc_clip and disc_head"):
        EmbeddingConfig(name="x", mode="apt", disc_clip="toy")


def test_unet_parts_learn_as_a_lora_that_leaves_the_unet_as_it_was(tmp_path, tiny_hosts):
    """--unet-parts: a LoRA on the chosen attention projections learns with its own rate (gradients reach it and
    both embeddings, never the UNet's weights); it starts as a no-op and detaching leaves the UNet bit for bit; the
    kohya file round-trips and another model's file is refused by name; APT writes NAME-unet.safetensors."""
    from scal_sdt.lora_layers.network import LoraNetwork, load_kohya, unet_targets

    host = tiny_hosts("tiny-sd1")
    modules = host.unet_modules()
    targets = unet_targets(modules, "attn2-kv")
    assert targets and all(p.endswith(("attn2.to_k", "attn2.to_v")) for p in targets)
    assert len(unet_targets(modules, "attn")) == 4 * len(targets)
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        cond = host.encode_prompts(["a photo"])
        before = host.predict(x_t, t, cond)
    lora = LoraNetwork(targets, rank=2).attach()
    with torch.no_grad():
        assert torch.equal(host.predict(x_t, t, cond), before)  # up is zero: a new LoRA changes nothing
    cfg = config(tmp_path, unet_parts="attn2-kv", unet_lr=1e-3)
    job = job_for(cfg, host, tmp_path, unet_lora=lora)
    groups = job.param_groups()
    assert groups[-1]["lr_scale"] == pytest.approx(1e-3 / 0.01)
    job.loss().backward()
    assert all(p.grad is not None for p in lora.parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in lora.parameters())
    for vectors in (job.vectors, job.neg_vectors):
        assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vectors.values())
    assert all(p.grad is None for m in host.components.modules().values() for p in m.parameters())
    with torch.no_grad():
        for layer in lora.layers:
            layer.up.weight.normal_(0, 0.5)
        changed = host.predict(x_t, t, cond)
    assert (changed - before).abs().max() > 1e-3
    path = lora.save(tmp_path / "x.safetensors", "sd1", "x")
    lora.detach()
    with torch.no_grad():
        assert torch.equal(host.predict(x_t, t, cond), before)
        loaded = load_kohya(path, modules).attach()
        assert torch.allclose(host.predict(x_t, t, cond), changed, atol=1e-6)
        loaded.detach()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "2"
    with pytest.raises(ValueError, match="not a LoRA for this model"):
        load_kohya(path, tiny_hosts("tiny-sdxl").unet_modules())

    result = train_embedding(config(tmp_path, name="zu", steps=3, unet_parts="attn2", unet_rank=2,
                                    lora_out=str(tmp_path / "Lora")), host, Collect())
    assert result.step == 3 and (tmp_path / "Lora" / "zu-unet.safetensors").exists()
    with torch.no_grad():
        assert torch.equal(host.predict(x_t, t, cond), before)  # training detached its LoRA
