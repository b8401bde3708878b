"""Text encoders: the original checkpoint layouts <-> transformers ``CLIPTextModel(WithProjection)`` state dicts.

The transformers side is the file layout of transformers/diffusers (``text_model.…`` and, with a projection,
``text_projection.weight``); :func:`module_text_state_dict` / :func:`fit_text_state_dict` adapt it to a module whose
own state dict has no ``text_model.`` level (CLIPTextModel in transformers 5).

- OpenAI CLIP (SD1 ``cond_stage_model.transformer.``, SDXL ``conditioner.embedders.0.transformer.``): the same keys
  with a prefix. Old checkpoints also hold the ``position_ids`` buffer (dropped here) and very old ones lack the
  ``text_model.`` level.
- OpenCLIP (SD2 ``cond_stage_model.model.``, SDXL ``conditioner.embedders.1.model.``): ``transformer.resblocks.N``
  with a packed ``attn.in_proj_weight`` (q, k, v), ``text_projection`` as a [width, proj] matrix (``x @ P``), and
  ``logit_scale``, which no text encoder uses (see :data:`OPEN_CLIP_UNUSED`).
"""
from __future__ import annotations

import re

import torch

from .convert_keys import rename

POSITION_IDS = "text_model.embeddings.position_ids"
OPEN_CLIP_UNUSED = ("logit_scale",)
_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_QKV = re.compile(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")
_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")


def clip_to_diffusers(sd: dict) -> dict:
    """OpenAI CLIP keys (after the checkpoint prefix) -> transformers keys."""
    out = {}
    for key, value in sd.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        if key != POSITION_IDS:
            out[key] = value
    return out


def clip_to_original(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k != POSITION_IDS}


def _count(keys, pattern: re.Pattern) -> int:
    return 1 + max((int(m[1]) for m in map(pattern.match, keys) if m), default=-1)


def open_clip_pairs(layers: int) -> list[tuple[str, str]]:
    pairs = [("token_embedding.", "text_model.embeddings.token_embedding."),
             ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
             ("ln_final.", "text_model.final_layer_norm.")]
    for i in range(layers):
        o, d = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        pairs += [(o + "ln_1.", d + "layer_norm1."), (o + "ln_2.", d + "layer_norm2."),
                  (o + "mlp.c_fc.", d + "mlp.fc1."), (o + "mlp.c_proj.", d + "mlp.fc2."),
                  (o + "attn.out_proj.", d + "self_attn.out_proj.")]
    return pairs


def open_clip_to_diffusers(sd: dict) -> dict:
    """OpenCLIP text keys (after the checkpoint prefix) -> transformers keys; ``logit_scale`` is left out."""
    out, rest = {}, {}
    for key, value in sd.items():
        m = _IN_PROJ.fullmatch(key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"text_model.encoder.layers.{m[1]}.self_attn.{name}_proj.{m[2]}"] = part
        elif key == "text_projection":
            out["text_projection.weight"] = value.t()
        elif key not in OPEN_CLIP_UNUSED:
            rest[key] = value
    out.update(rename(rest, open_clip_pairs(_count(sd, _RESBLOCK))))
    return out


def open_clip_to_original(sd: dict) -> dict:
    """transformers keys -> OpenCLIP text keys (q, k, v packed into ``in_proj``, projection transposed)."""
    out, rest, packed = {}, {}, {}
    for key, value in sd.items():
        m = _QKV.fullmatch(key)
        if m:
            packed.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t()
        elif key != POSITION_IDS:
            rest[key] = value
    for (layer, kind), parts in sorted(packed.items()):
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    out.update(rename(rest, open_clip_pairs(_count(sd, _LAYER)), reverse=True))
    return out


def module_text_state_dict(module: torch.nn.Module) -> dict:
    """A text encoder's state dict in the transformers file layout (``text_model.…``)."""
    sd = module.state_dict()
    if hasattr(module, "text_model"):
        return sd
    return {("" if k.startswith("text_projection.") else "text_model.") + k: v for k, v in sd.items()}


def fit_text_state_dict(sd: dict, module: torch.nn.Module) -> dict:
    """The inverse of :func:`module_text_state_dict`: keys as ``module.load_state_dict`` wants them."""
    if hasattr(module, "text_model"):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}
