"""VAE: original ``first_stage_model`` key layout <-> diffusers ``AutoencoderKL`` (keys without the prefix).

The original decoder numbers its up-blocks from the lowest resolution backwards (``decoder.up.{n-1-i}``); the
mid-block attention's q/k/v/proj_out are 1x1 convs [C, C, 1, 1] there and Linear [C, C] in diffusers.
"""
from __future__ import annotations

import re

from .convert_keys import rename

ATTENTION = (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0."))
_ATTN_WEIGHT = re.compile(r"(^|\.)mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def vae_pairs(config: dict) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for an AutoencoderKL with this diffusers config."""
    n = len(config["block_out_channels"])
    layers = config.get("layers_per_block", 2)
    pairs = []

    def resnet(orig: str, diff: str) -> None:
        pairs.extend([(orig, diff), (orig + "nin_shortcut.", diff + "conv_shortcut.")])

    for side in ("encoder", "decoder"):
        pairs.append((f"{side}.norm_out.", f"{side}.conv_norm_out."))
        pairs.extend((f"{side}.mid.attn_1.{a}", f"{side}.mid_block.attentions.0.{b}") for a, b in ATTENTION)
        for j in range(2):
            resnet(f"{side}.mid.block_{j + 1}.", f"{side}.mid_block.resnets.{j}.")
    for i in range(n):
        for j in range(layers):
            resnet(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.")
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
        orig_level = n - 1 - i
        for j in range(layers + 1):
            resnet(f"decoder.up.{orig_level}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
        if i < n - 1:
            pairs.append((f"decoder.up.{orig_level}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    return pairs


def vae_to_diffusers(sd_ldm_vae: dict, vae_config: dict) -> dict:
    out = rename(sd_ldm_vae, vae_pairs(vae_config))
    return {k: (v.reshape(v.shape[:2]) if v.dim() == 4 and _ATTN_WEIGHT.search(k) else v) for k, v in out.items()}


def vae_to_original(sd_diffusers: dict, vae_config: dict) -> dict:
    fixed = {k: (v[:, :, None, None] if v.dim() == 2 and _ATTN_WEIGHT.search(k) else v)
             for k, v in sd_diffusers.items()}
    return rename(fixed, vae_pairs(vae_config), reverse=True)
