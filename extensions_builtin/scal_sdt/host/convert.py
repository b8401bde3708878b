"""Original single-file checkpoint layout (LDM/SGM, as the WebUI and ComfyUI read it) <-> diffusers/transformers.

Pure functions over state dicts, no file I/O. Each part lives in its own module and is re-exported here:
UNet (:mod:`.convert_unet`), VAE (:mod:`.convert_vae`), text encoders (:mod:`.convert_text`). This module puts the
parts together under the checkpoint's prefixes, family-aware.
"""
from __future__ import annotations

from .components import Components
from .convert_keys import rename
from .convert_text import (OPEN_CLIP_UNUSED, clip_to_diffusers, clip_to_original, fit_text_state_dict,
                           module_text_state_dict, open_clip_to_diffusers, open_clip_to_original)
from .convert_unet import unet_pairs, unet_to_diffusers, unet_to_original
from .convert_vae import vae_pairs, vae_to_diffusers, vae_to_original
from .families import EncoderSpec, Family

__all__ = [
    "UNET_PREFIX", "VAE_PREFIX", "TEXT_PREFIXES", "rename", "unet_pairs", "unet_to_diffusers", "unet_to_original",
    "vae_pairs", "vae_to_diffusers", "vae_to_original", "clip_to_diffusers", "clip_to_original",
    "open_clip_to_diffusers", "open_clip_to_original", "module_text_state_dict", "fit_text_state_dict",
    "components_to_original", "original_to_parts",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {  # per family, in the order of family.encoders
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
SKIPPED_PREFIXES = ("model_ema.",)  # EMA copies of the UNet: not loaded, not kept


def is_open_clip(spec: EncoderSpec) -> bool:
    """OpenCLIP-H / -bigG (the ``model.`` layout) rather than OpenAI CLIP-L (the transformers layout)."""
    return spec.key != "clip_l"


def _with_prefix(prefix: str, sd: dict) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def _take(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _config(configs, part: str) -> dict:
    """``configs`` is an Architecture (``unet_config``/``vae_config``) or a dict with ``unet``/``vae`` keys."""
    value = getattr(configs, f"{part}_config", None)
    if value is None:
        value = configs.get(part, configs.get(f"{part}_config")) if isinstance(configs, dict) else None
    if value is None:
        raise ValueError(f"no {part} config given")
    return dict(value)


def components_to_original(components: Components) -> dict:
    """The full checkpoint state dict, with prefixes, in the original layout.

    Tensors the modules do not hold but the source checkpoint had (``components.extra['kept']``: ``logit_scale``,
    SD2's unused ``text_projection``, noise-schedule buffers) are written back unchanged.
    """
    c = components
    out = _with_prefix(UNET_PREFIX, unet_to_original(c.unet.state_dict(), dict(c.unet.config)))
    out.update(_with_prefix(VAE_PREFIX, vae_to_original(c.vae.state_dict(), dict(c.vae.config))))
    for spec, prefix, te in zip(c.family.encoders, TEXT_PREFIXES[c.family.name], c.text_encoders, strict=True):
        sd = module_text_state_dict(te)
        out.update(_with_prefix(prefix, open_clip_to_original(sd) if is_open_clip(spec) else clip_to_original(sd)))
    for key, value in c.extra.get("kept", {}).items():
        out.setdefault(key, value)
    return out


def original_to_parts(sd: dict, family: Family, configs) -> dict:
    """Split a checkpoint state dict into diffusers/transformers state dicts.

    Returns ``dict(unet=..., vae=..., text_encoders=[...], kept={...})``; text encoder dicts use the transformers
    file layout (see :func:`fit_text_state_dict`). ``kept`` holds, with their original keys, the tensors no module
    takes (``logit_scale``, the projection of an encoder without one, schedule buffers), EMA weights are dropped.
    """
    prefixes = (UNET_PREFIX, VAE_PREFIX, *TEXT_PREFIXES[family.name])
    kept = {k: v for k, v in sd.items() if not k.startswith(prefixes + SKIPPED_PREFIXES)}
    texts = []
    for spec, prefix in zip(family.encoders, TEXT_PREFIXES[family.name], strict=True):
        part = _take(sd, prefix)
        if is_open_clip(spec):
            unused = OPEN_CLIP_UNUSED if spec.pooled else OPEN_CLIP_UNUSED + ("text_projection",)
            kept.update({prefix + k: part.pop(k) for k in unused if k in part})
            texts.append(open_clip_to_diffusers(part))
        else:
            texts.append(clip_to_diffusers(part))
    return dict(unet=unet_to_diffusers(_take(sd, UNET_PREFIX), _config(configs, "unet")),
                vae=vae_to_diffusers(_take(sd, VAE_PREFIX), _config(configs, "vae")),
                text_encoders=texts, kept=kept)
