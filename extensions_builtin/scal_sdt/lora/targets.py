"""Where a LoRA run puts its adapters: by kohya key, the UNet's attention projections, feed-forward layers and
transformer in/out projections; with LoCon and up its ResNet blocks' convolutions (and time-embedding layers),
down- and upsamplers; with text encoders their attention and MLP layers. UNet blocks are numbered as kohya's
block_dims are: IN00…, MID, OUT00… (the original layout's input_blocks, middle_block, output_blocks)."""
from __future__ import annotations

import re

from torch import nn

from .adapters import LAYERS

ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
CONVS = ("in_layers.2", "out_layers.3", "skip_connection", "emb_layers.1", ".op", "conv")
TEXT = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.|^middle_block\.")


def block_of(path: str) -> str | None:
    """'input_blocks.4.1.…' -> 'IN04', 'middle_block.…' -> 'MID', 'output_blocks.2.…' -> 'OUT02'."""
    m = _BLOCK.match(path)
    if not m:
        return None
    if m.group(1) is None:
        return "MID"
    return ("IN" if m.group(1) == "input_blocks" else "OUT") + f"{int(m.group(2)):02d}"


def unet_blocks(unet_modules: dict[str, nn.Module]) -> list[str]:
    """The UNet's blocks in kohya's order."""
    found = {block_of(p) for p in unet_modules} - {None}
    ins = sorted(b for b in found if b.startswith("IN"))
    outs = sorted(b for b in found if b.startswith("OUT"))
    return ins + ["MID"] + outs


def unet_targets(unet_modules: dict[str, nn.Module], convs: bool) -> dict[str, tuple[nn.Module, str, bool]]:
    """kohya key -> (layer, block, is a conv-rank layer) for the UNet."""
    out = {}
    for path, m in unet_modules.items():
        block = block_of(path)
        if block is None or not isinstance(m, LAYERS):
            continue
        if path.endswith(ATTENTION) and ".transformer_blocks." in path or path.endswith(("proj_in", "proj_out")):
            conv_rank = isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
            out["lora_unet_" + path.replace(".", "_")] = (m, block, conv_rank)
        elif convs and path.endswith(CONVS):
            conv_rank = isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
            out["lora_unet_" + path.replace(".", "_")] = (m, block, conv_rank)
    return out


def text_targets(lora_targets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """kohya key -> Linear layer for the text encoders' attention and MLP layers (what the host names)."""
    return {k: m for k, m in lora_targets.items()
            if k.startswith(TEXT_PREFIXES) and k.endswith(TEXT) and isinstance(m, nn.Linear)}


def per_block(values: list, blocks: list[str], what: str, default) -> dict[str, object]:
    """kohya's per-block list as block -> value (every block ``default`` when the list is empty)."""
    if not values:
        return {b: default for b in blocks}
    if len(values) != len(blocks):
        raise ValueError(f"{what}: this UNet has {len(blocks)} blocks ({blocks[0]}…MID…{blocks[-1]}); "
                         f"{len(values)} value(s) given")
    return dict(zip(blocks, values))
