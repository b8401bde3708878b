"""Aesthetic gradients inside the WebUI: the loaded model's own text towers (tuned in place, in the WebUI's dtype,
on whatever device its --medvram/--lowvram hooks put them), and a hook on one generation's conditioning.

The hook wraps ``p.get_conds_with_caching`` of that one generation: the WebUI computes (and caches, in its
persistent ``cached_c``) the plain conditioning as always; for the positive prompts we blend in the tuned one, which
is cached here under the WebUI's own cache parameters plus the embedding and settings. So the setting takes effect on
every image, the WebUI's cache never holds a tuned result, and turning it off gives the plain result at once."""
from __future__ import annotations

import os
from dataclasses import astuple
from pathlib import Path

from modules import devices, paths, prompt_parser, shared  # noqa: the WebUI

from ..aesthetic.gradient import (AestheticSettings, Tower, TunedCache, blend, embedding_digest, groups,
                                  hf_tower, open_clip_tower, tuned)
from ..aesthetic.make import FAMILY_ENCODERS, load_aesthetic_embedding
from ..aesthetic.use import check_widths, projection_for, rows_for
from ..host.families import EOS_ID
from ..host.tokenizer import clip_token_ids

CACHE = TunedCache()


def aesthetic_dir() -> str:
    return os.path.join(paths.models_path, "aesthetic_embeddings")


def family_name(sd_model) -> str:
    return "sdxl" if getattr(sd_model, "is_sdxl", False) else "sd2" if getattr(sd_model, "is_sd2", False) else "sd1"


def webui_towers(sd_model, path: Path, clip_spec: str = "") -> tuple[list[Tower], dict]:
    """(the loaded model's text towers, the embedding's rows for them). SD1: CLIP-L (transformers) with the
    projection from the file or the CLIP; SD2: OpenCLIP-H; SDXL: both, each towards its own row."""
    family = family_name(sd_model)
    file = load_aesthetic_embedding(path)
    keys = [k for k, _ in FAMILY_ENCODERS[family]]
    rows = rows_for(path, file, keys)
    if family == "sdxl":
        embedders = [e for e in sd_model.conditioner.embedders if hasattr(e, "encode_embedding_init_text")]
    else:
        embedders = [sd_model.cond_stage_model]
    towers = []
    for key, embedder in zip(keys, embedders):
        wrapped = embedder.wrapped
        if hasattr(wrapped, "transformer"):  # OpenAI CLIP-L as a transformers CLIPTextModel
            projection = projection_for(key, file, clip_spec, family)
            towers.append(hf_tower(key, wrapped.transformer, lambda t: clip_token_ids(t, EOS_ID), projection))
        else:  # OpenCLIP: its encode_text projects with its own text_projection
            towers.append(open_clip_tower(key, wrapped.model, lambda t: clip_token_ids(t, 0)))
    with devices.autocast():
        _to_device(sd_model)
        check_widths(towers, rows, path.stem)
    return towers, rows


def _to_device(sd_model) -> None:
    """Under --medvram/--lowvram the WebUI moves SDXL's conditioner when its forward runs; we call its towers
    directly, so run its hooks first. (SD1/SD2's hooks sit on the modules we call and fire by themselves.)"""
    conditioner = getattr(sd_model, "conditioner", None)
    if conditioner is not None:
        for hook in list(conditioner._forward_pre_hooks.values()):
            hook(conditioner, ())


def apply_to(p, path: Path, settings: AestheticSettings, clip_spec: str = "") -> None:
    """Make generation ``p`` blend its positive prompts' conditioning with the tuned one (first pass, hires pass)."""
    if not settings.active:
        return
    sd_model = shared.sd_model
    if getattr(sd_model, "cond_stage_model", None) is None and getattr(sd_model, "conditioner", None) is None:
        raise ValueError("this WebUI's model has no text encoder to tune (Forge encodes prompts without gradients); "
                         "aesthetic gradients need AUTOMATIC1111's WebUI, or scal-sdt generate --aesthetic")
    towers, rows = webui_towers(sd_model, path, clip_spec)
    digest = embedding_digest(rows)
    plain_conds = p.get_conds_with_caching

    def get_conds_with_caching(function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        plain = plain_conds(function, required_prompts, steps, caches, extra_network_data, hires_steps)
        if function is not prompt_parser.get_multicond_learned_conditioning:
            return plain  # the negative prompt stays the WebUI's
        key = (p.cached_params(required_prompts, steps, extra_network_data, hires_steps,
                               shared.opts.use_old_scheduling), digest, astuple(settings))
        hit = CACHE.get(key)
        if hit is not None:
            return hit
        batch = [None] * len(required_prompts)
        _to_device(sd_model)
        for idx in groups(list(required_prompts), settings.batchwise):
            sub = prompt_parser.SdConditioning([required_prompts[i] for i in idx], copy_from=required_prompts)
            with tuned(towers, list(sub), rows, settings, autocast=devices.autocast) as cosines:
                with devices.autocast():
                    part = function(sd_model, sub, steps, hires_steps, shared.opts.use_old_scheduling)
            for i, item in zip(idx, part.batch):
                batch[i] = item
        print(f"[SCAL-SDT] aesthetic embedding {path.stem}: prompt-to-embedding cosine {cosines[0]:.3f} -> "
              f"{cosines[1]:.3f} after {settings.steps} steps")
        tuned_c = prompt_parser.MulticondLearnedConditioning(shape=(len(batch),), batch=batch)
        return CACHE.put(key, blend(plain, tuned_c, settings.weight))

    p.get_conds_with_caching = get_conds_with_caching
    p.extra_generation_params.update(settings.infotext(path.stem))
