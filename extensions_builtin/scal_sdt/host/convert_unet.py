"""UNet: original LDM/SGM key layout (``input_blocks`` …) <-> diffusers ``UNet2DConditionModel`` layout.

Keys are without the ``model.diffusion_model.`` prefix. One table of (original prefix, diffusers prefix) pairs is
built from the diffusers config and applied in either direction (:func:`scal_sdt.host.convert_keys.rename`), so the two
directions cannot disagree. Tensor shapes are kept as they are: SD1's 1x1-conv ``proj_in``/``proj_out`` is a conv in
diffusers too (``use_linear_projection=False``); SD2/SDXL use Linear layers in both layouts.
"""
from __future__ import annotations

from .convert_keys import rename

# inner names of a ResBlock (original) / ResnetBlock2D (diffusers)
RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
          ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _per_level(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_pairs(config: dict) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for a UNet with this diffusers config."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    n = len(down)
    layers = _per_level(config.get("layers_per_block", 2), n)
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
             ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
             ("middle_block.1.", "mid_block.attentions.0.")]

    def resnet(orig: str, diff: str) -> None:
        pairs.extend((orig + a, diff + b) for a, b in RESNET)

    index = 1
    for i, kind in enumerate(down):
        for j in range(layers[i]):
            resnet(f"input_blocks.{index}.0.", f"down_blocks.{i}.resnets.{j}.")
            if "CrossAttn" in kind:
                pairs.append((f"input_blocks.{index}.1.", f"down_blocks.{i}.attentions.{j}."))
            index += 1
        if i < n - 1:
            pairs.append((f"input_blocks.{index}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            index += 1
    resnet("middle_block.0.", "mid_block.resnets.0.")
    resnet("middle_block.2.", "mid_block.resnets.1.")
    index = 0
    for i, (kind, count) in enumerate(zip(up, reversed(layers))):
        for j in range(count + 1):
            resnet(f"output_blocks.{index}.0.", f"up_blocks.{i}.resnets.{j}.")
            slot = 1
            if "CrossAttn" in kind:
                pairs.append((f"output_blocks.{index}.1.", f"up_blocks.{i}.attentions.{j}."))
                slot = 2
            if j == count and i < n - 1:
                pairs.append((f"output_blocks.{index}.{slot}.conv.", f"up_blocks.{i}.upsamplers.0.conv."))
            index += 1
    return pairs


def unet_to_diffusers(sd_ldm_unet: dict, unet_config: dict) -> dict:
    return rename(sd_ldm_unet, unet_pairs(unet_config))


def unet_to_original(sd_diffusers: dict, unet_config: dict) -> dict:
    return rename(sd_diffusers, unet_pairs(unet_config), reverse=True)
