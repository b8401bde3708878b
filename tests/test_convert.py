"""Checkpoint layout conversion (original LDM/SGM single file <-> diffusers/transformers) and checkpoint files."""
import dataclasses
import json

import pytest
import torch

from scal_sdt.host import tiny
from scal_sdt.host.checkpoint import (METADATA_KEY, configs_from_tensors, configs_from_yaml, detect_family,
                                      load_checkpoint, load_diffusers_folder, read_metadata, read_state_dict,
                                      save_checkpoint)
from scal_sdt.host.convert import (TEXT_PREFIXES, components_to_original, fit_text_state_dict, module_text_state_dict,
                                   original_to_parts, unet_to_diffusers, vae_to_diffusers)
from scal_sdt.host.families import BOS_ID, EOS_ID, SD2

NAMES = tiny.TINY_NAMES


@pytest.fixture(scope="module")
def models():
    return {name: tiny.build_tiny(name) for name in NAMES}


def tiny_configs(c):
    widths = [te.config.hidden_size for te in c.text_encoders]
    pooled = c.text_encoders[-1].config.projection_dim if c.family.size_conditioning else 0
    return tiny.unet_config(c.family, sum(widths), pooled), tiny.vae_config()


def module_dicts(c):
    return [c.unet.state_dict(), c.vae.state_dict()] + [module_text_state_dict(te) for te in c.text_encoders]


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def tokens(batch=2):
    ids = torch.zeros(batch, 77, dtype=torch.long)
    ids[:, 0] = BOS_ID
    ids[0, 1:6] = torch.tensor([320, 1125, 539, 320, 2368])
    ids[0, 6] = EOS_ID
    ids[1, 1:3] = torch.tensor([1929, 530])
    ids[1, 3] = EOS_ID
    return ids


@torch.no_grad()
def outputs(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, te in enumerate(c.text_encoders):
        r = te(tokens(), output_hidden_states=True)
        out[f"text{i}"] = torch.stack(r.hidden_states)
        out[f"text{i}.last"] = r.last_hidden_state
        if hasattr(r, "text_embeds"):
            out[f"text{i}.pooled"] = r.text_embeds
    cfg = c.unet.config
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    ctx = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    extra = {}
    if cfg.addition_embed_type == "text_time":
        pooled = torch.randn(2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim, generator=g)
        extra = dict(added_cond_kwargs=dict(text_embeds=pooled, time_ids=torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)))
    out["unet"] = c.unet(x, torch.tensor([10, 500]), ctx, **extra).sample
    z = torch.randn(1, c.vae.config.latent_channels, 8, 8, generator=g)
    out["vae.decode"] = c.vae.decode(z).sample
    out["vae.encode"] = c.vae.encode(out["vae.decode"].clamp(-1, 1)).latent_dist.mean
    return out


# ------------------------------------------------------------------------------------------ pure conversion
@pytest.mark.parametrize("name", NAMES)
def test_diffusers_original_diffusers_is_bit_exact(models, name):
    c = models[name]
    original = components_to_original(c)
    parts = original_to_parts(original, c.family, {"unet": c.unet.config, "vae": c.vae.config})
    got = [parts["unet"], parts["vae"], *parts["text_encoders"]]
    for ref, new in zip(module_dicts(c), got, strict=True):
        assert_same_tensors(ref, new)
    assert parts["kept"] == {}


# real names at the tiny models' positions (one res block a level: down-samplers at input_blocks 2, 4, …)
KNOWN_KEYS = {
    "tiny-sd1": ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                 "model.diffusion_model.input_blocks.2.0.op.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                 "model.diffusion_model.output_blocks.1.1.conv.weight", "model.diffusion_model.time_embed.0.weight",
                 "model.diffusion_model.out.2.weight", "model.diffusion_model.output_blocks.5.2.conv.weight",
                 "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                 "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight", "first_stage_model.quant_conv.weight",
                 "first_stage_model.decoder.mid.block_2.conv1.weight", "first_stage_model.post_quant_conv.weight",
                 "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                 "cond_stage_model.transformer.text_model.final_layer_norm.weight"],
    "tiny-sd2": ["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
                 "cond_stage_model.model.transformer.resblocks.2.mlp.c_fc.weight",
                 "cond_stage_model.model.positional_embedding", "cond_stage_model.model.token_embedding.weight",
                 "cond_stage_model.model.ln_final.weight", "model.diffusion_model.input_blocks.1.1.proj_in.weight"],
    "tiny-sdxl": ["conditioner.embedders.1.model.text_projection", "model.diffusion_model.label_emb.0.0.weight",
                  "model.diffusion_model.label_emb.0.2.bias", "conditioner.embedders.0.transformer.text_model.embeddings"
                  ".token_embedding.weight", "conditioner.embedders.1.model.transformer.resblocks.2.attn.out_proj.weight",
                  "model.diffusion_model.input_blocks.5.1.transformer_blocks.1.attn1.to_q.weight",
                  "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.0.proj.weight",
                  "model.diffusion_model.output_blocks.0.1.transformer_blocks.1.norm3.weight",
                  "model.diffusion_model.output_blocks.3.2.conv.weight"],
}


@pytest.mark.parametrize("name", NAMES)
def test_original_keys_are_the_real_checkpoint_names(models, name):
    c = models[name]
    original = components_to_original(c)
    missing = [k for k in KNOWN_KEYS[name] if k not in original]
    assert not missing
    prefixes = ("model.diffusion_model.", "first_stage_model.", *TEXT_PREFIXES[c.family.name])
    assert all(k.startswith(prefixes) for k in original)
    assert not any("position_ids" in k or "logit_scale" in k for k in original)
    # layouts keep their own shapes
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    proj_in = original["model.diffusion_model.input_blocks.3.1.proj_in.weight"]
    assert proj_in.dim() == (4 if name == "tiny-sd1" else 2)
    if name != "tiny-sd1":
        prefix = TEXT_PREFIXES[c.family.name][-1]
        width = c.text_encoders[-1].config.hidden_size
        assert original[prefix + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
    if name == "tiny-sdxl":
        te = c.text_encoders[1]
        assert torch.equal(original["conditioner.embedders.1.model.text_projection"], te.text_projection.weight.T)


@pytest.mark.parametrize("name", NAMES)
def test_agrees_with_diffusers_single_file_conversion(models, name):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    c = models[name]
    original = components_to_original(c)
    theirs_unet = convert_ldm_unet_checkpoint(original, dict(c.unet.config))
    theirs_vae = convert_ldm_vae_checkpoint(original, dict(c.vae.config))
    ours_unet = unet_to_diffusers({k[22:]: v for k, v in original.items() if k.startswith("model.diffusion_model.")},
                                  dict(c.unet.config))
    ours_vae = vae_to_diffusers({k[18:]: v for k, v in original.items() if k.startswith("first_stage_model.")},
                                dict(c.vae.config))
    assert_same_tensors(theirs_unet, ours_unet)
    assert_same_tensors(theirs_vae, ours_vae)
    assert_same_tensors(c.unet.state_dict(), theirs_unet)


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_open_clip_text_tower_gives_the_same_output(models, name):
    from open_clip.transformer import TextTransformer

    c = models[name]
    te = c.text_encoders[-1]
    cfg = te.config
    prefix = TEXT_PREFIXES[c.family.name][-1]
    pooled = c.family.encoders[-1].pooled
    tower = TextTransformer(context_length=cfg.max_position_embeddings, vocab_size=cfg.vocab_size,
                            width=cfg.hidden_size, heads=cfg.num_attention_heads, layers=cfg.num_hidden_layers,
                            output_dim=cfg.projection_dim if pooled else None, output_tokens=True).eval()
    original = {k[len(prefix):]: v for k, v in components_to_original(c).items() if k.startswith(prefix)}
    tower.load_state_dict(original, strict=True)
    with torch.no_grad():
        ids = tokens()
        theirs_pooled, theirs_tokens = tower(ids)
        ours = te(ids)
    torch.testing.assert_close(ours.last_hidden_state, theirs_tokens, atol=1e-5, rtol=1e-5)
    if pooled:
        torch.testing.assert_close(ours.text_embeds, theirs_pooled, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ architecture
def _same_config(ref: dict, got: dict, skip=()):
    def norm(v):
        return list(v) if isinstance(v, (tuple, list)) else v
    diff = {k: (v, got.get(k)) for k, v in ref.items() if k not in skip and norm(v) != norm(got.get(k))}
    assert not diff


@pytest.mark.parametrize("name", NAMES)
def test_configs_from_tensors_recovers_the_tiny_configs(models, name):
    c = models[name]
    arch = configs_from_tensors(components_to_original(c), c.family)
    unet_ref, vae_ref = tiny_configs(c)
    # head counts and the image size are not in the shapes: the family's standard rule applies (SD1: 8 heads)
    _same_config(unet_ref, arch.unet_config, skip={"sample_size"} | ({"attention_head_dim"} if name != "tiny-sd1" else set()))
    _same_config(vae_ref, arch.vae_config, skip={"sample_size"})
    assert arch.vae_config["scaling_factor"] == c.family.vae_scale and arch.prediction_type == c.family.prediction_type
    for te, cfg in zip(c.text_encoders, arch.text_configs, strict=True):
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings",
                    "hidden_act", "projection_dim"):
            assert getattr(cfg, key) == getattr(te.config, key), key


def test_real_size_head_rule():
    """Shapes of a real SD2-like layout (320-channel UNet, 1024-wide text): heads follow the 64-channel rule, and
    an OpenCLIP-H cut to 23 layers (diffusers' conversion) reads its last layer."""
    w = 1024
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3),
          "model.diffusion_model.input_blocks.1.0.in_layers.0.weight": torch.empty(320),
          "model.diffusion_model.input_blocks.1.0.out_layers.3.weight": torch.empty(320, 320, 3, 3),
          "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.empty(320, 320),
          "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.empty(320, w),
          "model.diffusion_model.out.2.weight": torch.empty(4, 320, 3, 3),
          "first_stage_model.encoder.conv_in.weight": torch.empty(128, 3, 3, 3),
          "first_stage_model.encoder.conv_out.weight": torch.empty(8, 512, 3, 3),
          "first_stage_model.encoder.down.0.block.0.conv1.weight": torch.empty(128, 128, 3, 3),
          "first_stage_model.decoder.conv_out.weight": torch.empty(3, 128, 3, 3),
          "cond_stage_model.model.token_embedding.weight": torch.empty(49408, w),
          "cond_stage_model.model.positional_embedding": torch.empty(77, w),
          "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight": torch.empty(4 * w, w),
          "cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight": torch.empty(4 * w, w)}
    arch = configs_from_tensors(sd, SD2)
    assert arch.unet_config["attention_head_dim"] == (5,) and arch.text_configs[0].num_attention_heads == 16
    assert arch.text_configs[0].num_hidden_layers == 23 and arch.family.encoders[0].layer == -1


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_reproduces_the_model(models, name, tmp_path):
    c = models[name]
    path = save_checkpoint(c, tmp_path / f"{name}.safetensors")
    assert path.with_suffix(".yaml").is_file() and METADATA_KEY in read_metadata(path)
    loaded = load_checkpoint(path)
    assert loaded.family == c.family and loaded.extra["yaml"] == str(path.with_suffix(".yaml"))
    for ref, new in zip(module_dicts(c), module_dicts(loaded), strict=True):
        assert_same_tensors(ref, new)
    ref_out, new_out = outputs(c), outputs(loaded)
    for key in ref_out:
        assert torch.equal(ref_out[key], new_out[key]), key
    # the yaml alone describes the UNet and VAE exactly (head counts and sizes included)
    arch = configs_from_yaml(path.with_suffix(".yaml"))
    unet_ref, vae_ref = tiny_configs(c)
    _same_config(unet_ref, arch.unet_config, skip={"sample_size"} if name == "tiny-sdxl" else ())
    _same_config(vae_ref, arch.vae_config, skip={"sample_size"} if name == "tiny-sdxl" else ())
    assert arch.family.name == c.family.name and arch.prediction_type == c.family.prediction_type
    assert arch.vae_config["scaling_factor"] == c.vae.config.scaling_factor == loaded.vae.config.scaling_factor


def test_yaml_wins_over_the_header(models, tmp_path):
    c = models["tiny-sd1"]
    path = save_checkpoint(c, tmp_path / "m.safetensors")
    text = path.with_suffix(".yaml").read_text()
    path.with_suffix(".yaml").write_text(text.replace("params:\n", "params:\n    parameterization: v\n", 1)
                                         .replace(f"scale_factor: {c.vae.config.scaling_factor}", "scale_factor: 0.5"))
    loaded = load_checkpoint(path)
    assert loaded.family.prediction_type == "v_prediction" and loaded.vae.config.scaling_factor == 0.5


def test_ckpt_round_trips_and_loads_with_a_yaml(models, tmp_path):
    c = models["tiny-sd1"]
    original = components_to_original(c)
    original["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    original["model_ema.decay"] = torch.tensor(0.999)
    original["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": original, "global_step": 10}, path)
    assert_same_tensors(original, read_state_dict(path))
    save_checkpoint(c, tmp_path / "ref.safetensors")
    (tmp_path / "ref.yaml").rename(tmp_path / "old.yaml")
    loaded = load_checkpoint(path)  # no header: shapes + yaml; the text heads fall back to the 64-channel rule
    assert_same_tensors(c.unet.state_dict(), loaded.unet.state_dict())
    ref_out, new_out = outputs(c), outputs(loaded)
    assert torch.equal(ref_out["unet"], new_out["unet"]) and torch.equal(ref_out["vae.decode"], new_out["vae.decode"])
    assert_same_tensors(module_text_state_dict(c.text_encoders[0]), module_text_state_dict(loaded.text_encoders[0]))
    assert set(loaded.extra["kept"]) == {"alphas_cumprod"}  # EMA and position_ids dropped, schedule kept
    assert "alphas_cumprod" in components_to_original(loaded)


def test_lightning_ckpt_with_callbacks_loads_weights_only(tmp_path, monkeypatch):
    """Original SD1 .ckpt files pickle Lightning's ModelCheckpoint and numpy scalars beside the weights."""
    import sys
    import types

    import numpy as np

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    callback = ModelCheckpoint()
    callback.best_model_score = np.float64(0.5)
    weights = {"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3)}
    torch.save({"state_dict": weights, "callbacks": {ModelCheckpoint: {"x": np.float32(1)}}, "cb": callback,
                "global_step": 470000}, tmp_path / "sd-v1.ckpt")
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)
    assert_same_tensors(weights, read_state_dict(tmp_path / "sd-v1.ckpt"))


def test_unused_open_clip_tensors_are_kept_and_written_back(models, tmp_path):
    c = models["tiny-sd2"]
    original = components_to_original(c)
    original["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    original["cond_stage_model.model.text_projection"] = torch.randn(64, 64)
    path = tmp_path / "sd2.safetensors"
    from safetensors.torch import save_file
    save_file(original, str(path), metadata={METADATA_KEY: json.dumps(
        json.loads(read_metadata(save_checkpoint(c, tmp_path / "x.safetensors"))[METADATA_KEY]))})
    loaded = load_checkpoint(path)
    again = components_to_original(loaded)
    assert_same_tensors(original, again)


def test_diffusers_folder(models, tmp_path):
    from diffusers import DDIMScheduler

    c = models["tiny-sd2"]
    folder = tmp_path / "sd2"
    c.unet.save_pretrained(folder / "unet")
    c.vae.save_pretrained(folder / "vae")
    c.text_encoders[0].save_pretrained(folder / "text_encoder")
    DDIMScheduler(prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    loaded = load_diffusers_folder(folder)
    assert loaded.family.name == "sd2" and loaded.family.prediction_type == "v_prediction"
    assert loaded.family.encoders[0].layer == -1  # diffusers' SD2 encoder is cut to the penultimate layer
    for ref, new in zip(module_dicts(c), module_dicts(loaded), strict=True):
        assert_same_tensors(ref, new)
    # the layer choice survives a checkpoint round trip (it is in our header)
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "from_folder.safetensors"))
    assert again.family == loaded.family
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder"):
        load_diffusers_folder(tmp_path)


def test_bad_files_are_named(tmp_path):
    for name in ("broken.safetensors", "broken.ckpt"):
        path = tmp_path / name
        path.write_bytes(b"\x00not a checkpoint" * 10)
        with pytest.raises(ValueError, match=name):
            read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        read_state_dict(tmp_path / "absent.safetensors")
    (tmp_path / "model.gguf").write_bytes(b"x")
    with pytest.raises(ValueError, match="model.gguf.*unsupported"):
        read_state_dict(tmp_path / "model.gguf")
    lora = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file
    save_file({"lora_unet_down_blocks_0.alpha": torch.tensor(1.0)}, str(lora))
    with pytest.raises(ValueError, match="lora.safetensors.*no UNet"):
        load_checkpoint(lora)


def test_unsupported_models_are_refused(models):
    sd = components_to_original(models["tiny-sd1"])
    inpaint = dict(sd, **{"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)})
    with pytest.raises(ValueError, match="inpainting"):
        detect_family(inpaint)
    xl = components_to_original(models["tiny-sdxl"])
    refiner = {k.replace("embedders.1.", "embedders.0."): v for k, v in xl.items() if "embedders.0." not in k}
    with pytest.raises(ValueError, match="refiner"):
        detect_family(refiner)
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        detect_family({k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")})
    assert detect_family(sd).name == "sd1" and detect_family(xl).name == "sdxl"


def test_fit_text_state_dict_matches_the_module(models):
    for c in models.values():
        for te in c.text_encoders:
            sd = module_text_state_dict(te)
            assert all(k.startswith(("text_model.", "text_projection.")) for k in sd)
            assert sorted(fit_text_state_dict(sd, te)) == sorted(te.state_dict())


def test_family_replace_is_kept_on_save(models, tmp_path):
    c = models["tiny-sd1"]
    v = dataclasses.replace(c, family=dataclasses.replace(c.family, prediction_type="v_prediction"))
    loaded = load_checkpoint(save_checkpoint(v, tmp_path / "v.safetensors"))
    assert loaded.family.prediction_type == "v_prediction"
    assert "parameterization: v" in (tmp_path / "v.yaml").read_text()
