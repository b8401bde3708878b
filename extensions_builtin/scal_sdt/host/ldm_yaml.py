"""The ldm (SD1/SD2, ``LatentDiffusion``) and sgm (SDXL, ``DiffusionEngine``) inference yaml the WebUI reads beside a
checkpoint: :func:`configs_from_yaml` reads one into an :class:`Architecture`, :func:`write_yaml` writes one."""
from __future__ import annotations

from pathlib import Path

import yaml
from transformers import CLIPTextConfig

from ..files import atomic_write_text
from .architecture import SAMPLE_SIZE, Architecture, text_config
from .components import Components
from .families import SD1, SD2, SDXL
from .text_encoder_folder import (STOCK_CLIP_L, is_stock_clip_l, read_open_clip_config, stock_open_clip_arch,
                                  write_clip_text_folder, write_open_clip_config)

OPEN_CLIP_ARCH = {"sd2": ("ViT-H-14", "laion2b_s32b_b79k"), "sdxl": ("ViT-bigG-14", "laion2b_s39b_b160k")}
# The call that registers a small OpenCLIP tower's model config with open_clip inside the WebUI. ldm/sgm's
# ``instantiate_from_config`` calls any ``target`` with ``params``; we put it in a slot that is built *before* the
# text encoders and whose result nothing uses at inference: SD2 (ldm) the VAE's ``lossconfig`` (otherwise
# ``torch.nn.Identity``; ``LatentDiffusion`` builds the first stage before the cond stage), SDXL (sgm) the
# ``DiffusionEngine``'s ``sampler_config`` (otherwise absent, i.e. ``sampler = None``; it is built before the
# conditioner). ``open_clip.add_model_config`` returns None, so the slot holds None, as it would without a config.
OPEN_CLIP_REGISTER = "open_clip.add_model_config"
CLIP_FOLDER_SUFFIX = ".text_encoder"  # <stem>.text_encoder/ (CLIP-L), <stem>.text_encoder_2/ (SDXL's OpenCLIP)


def _registered_open_clip(model: dict) -> dict[str, dict]:
    """The open_clip model configs a yaml registers through :data:`OPEN_CLIP_REGISTER` hooks, by name."""
    p = model.get("params") or {}
    hooks = [p.get("sampler_config"), ((p.get("first_stage_config") or {}).get("params") or {}).get("lossconfig")]
    found = {}
    for hook in hooks:
        if isinstance(hook, dict) and hook.get("target") == OPEN_CLIP_REGISTER:
            path = Path(str((hook.get("params") or {}).get("path", "")))
            cfg = read_open_clip_config(path) if path.suffix == ".json" else None
            if cfg is not None:
                found[path.stem] = cfg
    return found


def _text_from_yaml(target: str, params: dict, registered: dict | None = None) -> CLIPTextConfig | None:
    if target.endswith("FrozenCLIPEmbedder"):
        version = params.get("version", STOCK_CLIP_L)
        if (Path(version) / "config.json").is_file():
            return CLIPTextConfig.from_pretrained(version, local_files_only=True)
        if version == STOCK_CLIP_L:
            return text_config(768, 12, 3072, 49408, 77, "quick_gelu")
        return None
    arch = params.get("arch", "ViT-H-14")
    model = (registered or {}).get(arch)
    if model is None:
        import open_clip
        model = open_clip.get_model_config(arch)
    if model is None:
        return None
    text = model["text_cfg"]
    width = text["width"]
    return text_config(width, text["layers"], int(width * text.get("mlp_ratio", 4.0)), text.get("vocab_size", 49408),
                       text.get("context_length", 77), "gelu", model.get("embed_dim"), text["heads"])


def _unet_from_yaml(net: dict, sample_size: int, time_dim: int | None) -> dict:
    channels = [net["model_channels"] * m for m in net["channel_mult"]]
    n = len(channels)
    cross = [2 ** i in net.get("attention_resolutions", []) for i in range(n)]
    head_channels, num_heads = net.get("num_head_channels", -1), net.get("num_heads", -1)
    heads = tuple(c // head_channels if head_channels != -1 else num_heads for c in channels)
    depth = net.get("transformer_depth", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * n
    if not cross[-1]:
        depth[-1] = net.get("transformer_depth_middle", depth[-1])
    res = net.get("num_res_blocks", 2)
    context = net.get("context_dim")
    cfg = dict(sample_size=sample_size, in_channels=net.get("in_channels", 4), out_channels=net.get("out_channels", 4),
               block_out_channels=tuple(channels),
               layers_per_block=tuple(res) if isinstance(res, (list, tuple)) else res,
               down_block_types=tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross),
               up_block_types=tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross)),
               cross_attention_dim=context[0] if isinstance(context, (list, tuple)) else context,
               attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
               use_linear_projection=bool(net.get("use_linear_in_transformer", False)), norm_num_groups=32)
    if any(d != 1 for d in depth):
        cfg["transformer_layers_per_block"] = tuple(depth)
    if net.get("adm_in_channels"):
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim or 256,
                   projection_class_embeddings_input_dim=net["adm_in_channels"])
    return cfg


def configs_from_yaml(path) -> Architecture:
    """Read the ldm (``LatentDiffusion``, SD1/SD2) or sgm (``DiffusionEngine``, SDXL) inference yaml the WebUI reads."""
    path = Path(path)
    try:
        return _read_yaml(yaml.safe_load(path.read_text(encoding="utf-8"))["model"], path)
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot read model config {path}: {type(e).__name__}: {e}") from e


def _read_yaml(model: dict, path: Path) -> Architecture:
    target, p = model.get("target", ""), model.get("params", {})
    if target.endswith(".DiffusionEngine"):
        family = SDXL
        embedders = p["conditioner_config"]["params"]["emb_models"]
        texts = [e for e in embedders if e.get("input_key", "txt") == "txt"]
        if len(texts) != 2 or not texts[0]["target"].endswith("FrozenCLIPEmbedder"):
            raise ValueError(f"{path}: only the SDXL base layout (CLIP-L + OpenCLIP-bigG) is supported, not a refiner")
        time_dim = next((e.get("params", {}).get("outdim") for e in embedders
                         if e["target"].endswith("ConcatTimestepEmbedderND")), None)
        scaling = p.get("denoiser_config", {}).get("params", {}).get("scaling_config", {}).get("target", "")
        prediction = "v_prediction" if scaling.endswith("VScaling") else "epsilon"
        unet = _unet_from_yaml(p["network_config"]["params"], SAMPLE_SIZE["sdxl"], time_dim)
    elif target.endswith(".LatentDiffusion"):
        texts = [p["cond_stage_config"]]
        text_target = texts[0]["target"]
        if text_target.endswith(".FrozenCLIPEmbedder"):
            family = SD1
        elif text_target.endswith(".FrozenOpenCLIPEmbedder"):
            family = SD2
        else:
            raise ValueError(f"{path}: unsupported text encoder {text_target}")
        prediction = "v_prediction" if p.get("parameterization") == "v" else "epsilon"
        unet = _unet_from_yaml(p["unet_config"]["params"], p.get("image_size", SAMPLE_SIZE[family.name]), None)
    else:
        raise ValueError(f"{path}: unsupported model {target!r} (inpainting, unCLIP, depth and refiner models are not)")
    dd = p["first_stage_config"]["params"]["ddconfig"]
    n = len(dd["ch_mult"])
    vae = dict(in_channels=dd.get("in_channels", 3), out_channels=dd.get("out_ch", 3), latent_channels=dd["z_channels"],
               block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]), layers_per_block=dd["num_res_blocks"],
               down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
               norm_num_groups=32, sample_size=unet["sample_size"] * 2 ** (n - 1),
               scaling_factor=p.get("scale_factor", family.vae_scale))
    registered = _registered_open_clip(model)
    text_configs = [_text_from_yaml(t["target"], t.get("params") or {}, registered) for t in texts]
    return Architecture(family, unet, vae, text_configs, prediction)


def _ldm_unet_params(cfg: dict, sgm: bool) -> dict:
    channels = list(cfg["block_out_channels"])
    n, base = len(channels), channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"block_out_channels {channels} are not multiples of the first")
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * n
    cross = ["CrossAttn" in t for t in cfg["down_block_types"]]
    per_head = {c // h for c, h, x in zip(channels, heads, cross) if x} | {channels[-1] // heads[-1]}
    depth = cfg.get("transformer_layers_per_block", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * n
    params = dict(use_checkpoint=True, **({} if sgm else dict(image_size=32)),  # ldm: image_size unused, required
                  in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                  model_channels=base, attention_resolutions=[2 ** i for i, x in enumerate(cross) if x],
                  num_res_blocks=cfg["layers_per_block"], channel_mult=[c // base for c in channels])
    if len(per_head) == 1 and cfg.get("use_linear_projection"):  # SD2/SDXL: a fixed head width
        params["num_head_channels"] = per_head.pop()
    elif len(set(heads)) == 1:  # SD1: a fixed head count
        params["num_heads"] = heads[0]
    elif len(per_head) == 1:
        params["num_head_channels"] = per_head.pop()
    else:
        raise ValueError(f"heads {heads} on channels {channels}: neither a fixed head count nor fixed head width")
    params.update(use_spatial_transformer=True, use_linear_in_transformer=bool(cfg.get("use_linear_projection")),
                  context_dim=cfg["cross_attention_dim"], legacy=False)
    if sgm:
        params.update(transformer_depth=depth, adm_in_channels=cfg["projection_class_embeddings_input_dim"],
                      num_classes="sequential", spatial_transformer_attn_type="softmax-xformers")
    elif len({d for d, x in zip(depth, cross) if x} | {depth[-1]}) == 1:
        params["transformer_depth"] = depth[-1]
    else:
        raise ValueError(f"ldm (SD1/SD2) UNets have one transformer depth, not {depth}")
    return params


def _vae_params(cfg: dict) -> dict:
    channels = list(cfg["block_out_channels"])
    return dict(embed_dim=cfg["latent_channels"], monitor="val/rec_loss",
                ddconfig=dict(double_z=True, z_channels=cfg["latent_channels"], resolution=256,
                              in_channels=cfg["in_channels"], out_ch=cfg["out_channels"], ch=channels[0],
                              ch_mult=[c // channels[0] for c in channels], num_res_blocks=cfg["layers_per_block"],
                              attn_resolutions=[], dropout=0.0),
                lossconfig=dict(target="torch.nn.Identity"))


def _open_clip_params(family: str, open_clip_config) -> tuple[dict, dict | None]:
    """(arch/version params, registration hook or None) for the family's OpenCLIP embedder."""
    if open_clip_config is None:
        arch, version = OPEN_CLIP_ARCH[family]
        return dict(arch=arch, version=version), None
    path = Path(open_clip_config).absolute()
    # version None: no pretrained weights are asked for (the WebUI drops them anyway; the checkpoint has them)
    return dict(arch=path.stem, version=None), dict(target=OPEN_CLIP_REGISTER, params=dict(path=str(path)))


def model_yaml(components: Components, clip_version: str | None = None, open_clip_config=None) -> dict:
    """The inference config the WebUI (v1.8) instantiates for these components, as a dict.

    The text encoders are named, not described: ``clip_version`` (SD1, SDXL's CLIP-L; default the stock
    ``openai/clip-vit-large-patch14``) is a Hugging Face name or a local folder (see
    :func:`.text_encoder_folder.write_clip_text_folder`); ``open_clip_config`` (SD2, SDXL's OpenCLIP) is None for
    the stock ``ViT-H-14``/``ViT-bigG-14`` or the path of an open_clip model config JSON
    (:func:`.text_encoder_folder.write_open_clip_config`), which the yaml then registers (:data:`OPEN_CLIP_REGISTER`)
    and names as ``arch``. :func:`write_yaml` chooses and writes these for the components' actual sizes.
    """
    c = components
    unet_cfg, vae_cfg = dict(c.unet.config), dict(c.vae.config)
    v = c.family.prediction_type == "v_prediction"
    clip_params = {} if clip_version in (None, STOCK_CLIP_L) else dict(version=str(clip_version))
    if c.family.name == "sdxl":
        open_clip_params, register = _open_clip_params("sdxl", open_clip_config)
        clip_layers = c.text_encoders[0].config.num_hidden_layers
        sgm = "sgm.modules.diffusionmodules."
        txt = [dict(is_trainable=False, input_key="txt", target="sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                    params=dict(layer="hidden", layer_idx=clip_layers + 1 + c.family.encoders[0].layer,
                                **clip_params)),
               dict(is_trainable=False, input_key="txt", target="sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                    params=dict(**open_clip_params, freeze=True, layer="penultimate",
                                always_return_pooled=True, legacy=False))]
        size = [dict(is_trainable=False, input_key=key, target="sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                     params=dict(outdim=unet_cfg["addition_time_embed_dim"]))
                for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")]
        kind = "V" if v else "Eps"
        params = dict(
            scale_factor=float(vae_cfg["scaling_factor"]), disable_first_stage_autocast=True,
            denoiser_config=dict(target=sgm + "denoiser.DiscreteDenoiser", params=dict(
                num_idx=1000, weighting_config=dict(target=f"{sgm}denoiser_weighting.{kind}Weighting"),
                scaling_config=dict(target=f"{sgm}denoiser_scaling.{kind}Scaling"),
                discretization_config=dict(target=sgm + "discretizer.LegacyDDPMDiscretization"))),
            network_config=dict(target=sgm + "openaimodel.UNetModel", params=_ldm_unet_params(unet_cfg, True)),
            **({} if register is None else dict(sampler_config=register)),
            conditioner_config=dict(target="sgm.modules.GeneralConditioner", params=dict(emb_models=txt + size)),
            first_stage_config=dict(target="sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                                    params=_vae_params(vae_cfg)))
        return dict(model=dict(target="sgm.models.diffusion.DiffusionEngine", params=params))
    register = None
    if c.family.name == "sd1":
        cond = dict(target="ldm.modules.encoders.modules.FrozenCLIPEmbedder")
        if clip_params:
            cond["params"] = clip_params
    else:
        open_clip_params, register = _open_clip_params("sd2", open_clip_config)
        cond = dict(target="ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                    params=dict(**open_clip_params, freeze=True, layer="penultimate"))
    vae_params = _vae_params(vae_cfg)
    if register is not None:
        vae_params["lossconfig"] = register
    params = dict(linear_start=0.00085, linear_end=0.012, num_timesteps_cond=1, log_every_t=200, timesteps=1000,
                  first_stage_key="jpg", cond_stage_key="txt", image_size=int(unet_cfg["sample_size"]),
                  channels=unet_cfg["in_channels"], cond_stage_trainable=False, conditioning_key="crossattn",
                  monitor="val/loss_simple_ema", scale_factor=float(vae_cfg["scaling_factor"]), use_ema=False)
    if v:
        params = dict(parameterization="v", **params)
    params.update(unet_config=dict(target="ldm.modules.diffusionmodules.openaimodel.UNetModel",
                                   params=_ldm_unet_params(unet_cfg, False)),
                  first_stage_config=dict(target="ldm.models.autoencoder.AutoencoderKL", params=vae_params),
                  cond_stage_config=cond)
    return dict(model=dict(base_learning_rate=1.0e-4, target="ldm.models.diffusion.ddpm.LatentDiffusion",
                           params=params))


def text_encoder_files(components: Components, yaml_path) -> dict:
    """Write what the WebUI needs, beside ``yaml_path``, to build text encoders of non-stock sizes, and return the
    :func:`model_yaml` keyword arguments that name them.

    A CLIP-L tower (SD1, SDXL's first) of another size than ``openai/clip-vit-large-patch14`` gets
    ``<stem>.text_encoder/`` (config + tokenizer); an OpenCLIP tower (SD2, SDXL's second) of another size than
    ``ViT-H-14``/``ViT-bigG-14`` gets ``<stem>.text_encoder[_2]/<name>.json`` (an open_clip model config).
    """
    yaml_path = Path(yaml_path).absolute()
    kwargs = {}
    for i, (spec, te) in enumerate(zip(components.family.encoders, components.text_encoders)):
        folder = yaml_path.with_name(yaml_path.stem + CLIP_FOLDER_SUFFIX + ("" if i == 0 else f"_{i + 1}"))
        open_clip = components.family.name == "sd2" or (components.family.name == "sdxl" and i == 1)
        if not open_clip:
            if not is_stock_clip_l(te.config):
                kwargs["clip_version"] = str(write_clip_text_folder(te.config, folder))
        elif stock_open_clip_arch(te.config) is None:
            kwargs["open_clip_config"] = write_open_clip_config(te.config, folder)[1]
    return kwargs


def write_yaml(components: Components, path) -> Path:
    """Write the ldm (SD1/SD2) or sgm (SDXL) inference yaml the WebUI reads for a checkpoint (same stem), plus the
    text-encoder files a non-stock size needs (:func:`text_encoder_files`), named in it by absolute path.

    The WebUI builds text encoders from names: SD1's and SDXL's ``FrozenCLIPEmbedder`` load ``version`` with
    transformers (the stock ``openai/clip-vit-large-patch14`` must be in the local Hugging Face cache when
    offline; a small one is our ``<stem>.text_encoder/`` folder), the OpenCLIP embedders build the open_clip
    ``arch`` (``ViT-H-14``, ``ViT-bigG-14``, or our registered ``<stem>.text_encoder[_2]/<name>.json``). Moving
    the checkpoint means writing the yaml again (the paths are absolute; a relative one would be resolved from the
    WebUI's working directory). Our own loader reads the exact architecture from the checkpoint header and does
    not need these files. SD2's OpenCLIP layer is written as ``penultimate``, the WebUI's standard.
    """
    path = Path(path)
    kwargs = text_encoder_files(components, path)
    atomic_write_text(path, yaml.safe_dump(model_yaml(components, **kwargs), sort_keys=False))
    return path
