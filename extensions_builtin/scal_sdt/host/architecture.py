"""The architecture of a checkpoint: the diffusers/transformers constructor configs, and where they come from.

:func:`configs_from_tensors` infers them from tensor shapes (what shapes cannot say follows the family's standard
rule); :func:`architecture_record` / :func:`architecture_from_record` are the exact record we keep in the header of
the checkpoints we write; :func:`merge_yaml` lets a WebUI yaml (:mod:`.ldm_yaml`) win, as in the WebUI.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field

from transformers import CLIPTextConfig

from .components import Components
from .convert import TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX, clip_to_diffusers, is_open_clip
from .families import BOS_ID, EOS_ID, SD1, SD2, SDXL, Family

TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id",
             "eos_token_id", "pad_token_id")
SAMPLE_SIZE = {"sd1": 64, "sd2": 96, "sdxl": 128}  # latent size the family was trained at
OPEN_CLIP_LAYERS = {1024: 24, 1280: 32}  # ViT-H-14, ViT-bigG-14: a file one layer short was cut by diffusers


@dataclass
class Architecture:
    """What it takes to build the modules: diffusers/transformers constructor configs.

    ``family`` may differ from the stock one in its encoders' layers (an SD2 text encoder cut to 23 layers uses its
    last layer). ``text_configs`` entries are ``None`` where the source does not say (a yaml naming an unknown arch).
    """

    family: Family
    unet_config: dict
    vae_config: dict
    text_configs: list = field(default_factory=list)
    prediction_type: str = "epsilon"


def _count(keys, pattern: str) -> int:
    regex = re.compile(pattern)
    return 1 + max((int(m[1]) for m in map(regex.match, keys) if m), default=-1)


def _depth(unet: dict, prefix: str) -> int:
    return _count(unet, re.escape(prefix) + r"transformer_blocks\.(\d+)\.")


def text_config(width, layers, intermediate, vocab, positions, act, projection=None, heads=None) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=heads or max(1, width // 64), max_position_embeddings=positions,
                          hidden_act=act, projection_dim=projection or width, bos_token_id=BOS_ID,
                          eos_token_id=EOS_ID, pad_token_id=1)


def _text_from_tensors(part: dict, open_clip: bool) -> CLIPTextConfig:
    if open_clip:
        tok, proj = part["token_embedding.weight"], part.get("text_projection")
        return text_config(tok.shape[1], _count(part, r"transformer\.resblocks\.(\d+)\."),
                           part["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], tok.shape[0],
                           part["positional_embedding"].shape[0], "gelu", None if proj is None else proj.shape[1])
    p = clip_to_diffusers(part)
    tok = p["text_model.embeddings.token_embedding.weight"]
    return text_config(tok.shape[1], _count(p, r"text_model\.encoder\.layers\.(\d+)\."),
                       p["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0], tok.shape[0],
                       p["text_model.embeddings.position_embedding.weight"].shape[0], "quick_gelu")


def _unet_from_tensors(u: dict, family: Family, pooled_dim: int) -> dict:
    levels, index = [[]], 1
    while f"input_blocks.{index}.0.op.weight" in u or f"input_blocks.{index}.0.in_layers.0.weight" in u:
        if f"input_blocks.{index}.0.op.weight" in u:
            levels.append([])
        else:
            levels[-1].append(index)
        index += 1
    channels = tuple(u[f"input_blocks.{lv[0]}.0.out_layers.3.weight"].shape[0] for lv in levels)
    depths = [_depth(u, f"input_blocks.{lv[0]}.1.") for lv in levels]
    layers = [len(lv) for lv in levels]
    proj_in = next(v for k, v in u.items() if k.endswith("proj_in.weight"))
    to_k = next(v for k, v in u.items() if k.endswith("attn2.to_k.weight"))
    heads = 8 if family.name == "sd1" else tuple(max(1, c // 64) for c in channels)  # ldm: num_heads 8 / 64 channels
    cfg = dict(sample_size=SAMPLE_SIZE[family.name], in_channels=u["input_blocks.0.0.weight"].shape[1],
               out_channels=u["out.2.weight"].shape[0], block_out_channels=channels,
               layers_per_block=layers[0] if len(set(layers)) == 1 else tuple(layers),
               down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
               up_block_types=tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
               cross_attention_dim=to_k.shape[1], attention_head_dim=heads, use_linear_projection=proj_in.dim() == 2,
               norm_num_groups=32)
    per_level = [d or 1 for d in depths]
    if not depths[-1]:  # diffusers gives the mid-block the depth of the last level
        per_level[-1] = _depth(u, "middle_block.1.") or 1
    if any(d != 1 for d in per_level):
        cfg["transformer_layers_per_block"] = tuple(per_level)
    if "label_emb.0.0.weight" in u:
        adm = u["label_emb.0.0.weight"].shape[1]
        if (adm - pooled_dim) % 6:
            raise ValueError(f"cannot split the SDXL size embedding ({adm} inputs, pooled text {pooled_dim})")
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled_dim) // 6,
                   projection_class_embeddings_input_dim=adm)
    return cfg


def _vae_from_tensors(v: dict, unet_sample_size: int, scale: float) -> dict:
    n = _count(v, r"encoder\.down\.(\d+)\.")
    return dict(in_channels=v["encoder.conv_in.weight"].shape[1], out_channels=v["decoder.conv_out.weight"].shape[0],
                latent_channels=v["encoder.conv_out.weight"].shape[0] // 2,
                block_out_channels=tuple(v[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(n)),
                layers_per_block=_count(v, r"encoder\.down\.0\.block\.(\d+)\."),
                down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                norm_num_groups=32, sample_size=unet_sample_size * 2 ** (n - 1), scaling_factor=scale)


def configs_from_tensors(sd: dict, family: Family) -> Architecture:
    """Infer the architecture from tensor shapes (what shapes cannot say follows the family's standard rule:
    SD1 8 heads, SD2/SDXL 64 channels a head, text encoders 64 channels a head, the family's prediction type)."""
    texts = [_text_from_tensors({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, is_open_clip(spec))
             for spec, p in zip(family.encoders, TEXT_PREFIXES[family.name])]
    encoders = tuple(dataclasses.replace(spec, layer=-1)
                     if is_open_clip(spec) and spec.layer == -2 and family.name == "sd2"
                     and OPEN_CLIP_LAYERS.get(cfg.hidden_size) == cfg.num_hidden_layers + 1 else spec
                     for spec, cfg in zip(family.encoders, texts))
    pooled = texts[-1].projection_dim if family.size_conditioning else 0
    unet = _unet_from_tensors({k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)},
                              family, pooled)
    vae = _vae_from_tensors({k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)},
                            unet["sample_size"], family.vae_scale)
    return Architecture(dataclasses.replace(family, encoders=encoders), unet, vae, texts, family.prediction_type)


def merge_yaml(arch: Architecture, over: Architecture, path) -> Architecture:
    """The yaml wins for the UNet, VAE and prediction type; it only lends text encoders their head count (where its
    named encoder has their width) and its ``layer`` settings are not read (they count the WebUI arch's layers)."""
    if over.family.name != arch.family.name:
        raise ValueError(f"{path} describes an {over.family.name} model, but the checkpoint is {arch.family.name}")
    texts = [copy.deepcopy(cfg) for cfg in arch.text_configs]
    for cfg, yaml_cfg in zip(texts, over.text_configs):
        if yaml_cfg is not None and yaml_cfg.hidden_size == cfg.hidden_size:
            cfg.num_attention_heads = yaml_cfg.num_attention_heads
    unet, vae = dict(over.unet_config), dict(over.vae_config)
    if over.family.name == "sdxl":  # an sgm yaml does not state the image size
        unet.pop("sample_size"), vae.pop("sample_size")
    return Architecture(arch.family, {**arch.unet_config, **unet}, {**arch.vae_config, **vae}, texts,
                        over.prediction_type)


def architecture_record(components: Components) -> dict:
    """The exact architecture as JSON-able data (stored in the header of the checkpoints we write)."""
    c = components

    def plain(config) -> dict:
        return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))

    return dict(format=1, family=c.family.name, prediction_type=c.family.prediction_type,
                encoder_layers=[s.layer for s in c.family.encoders], unet_config=plain(c.unet.config),
                vae_config=plain(c.vae.config),
                text_configs=[{k: getattr(te.config, k) for k in TEXT_KEYS} for te in c.text_encoders])


def architecture_from_record(record: dict) -> Architecture:
    base = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}[record["family"]]
    encoders = tuple(dataclasses.replace(s, layer=layer) for s, layer in zip(base.encoders, record["encoder_layers"]))
    return Architecture(dataclasses.replace(base, encoders=encoders), record["unet_config"], record["vae_config"],
                        [CLIPTextConfig(**t) for t in record["text_configs"]], record["prediction_type"])
