"""The UNet's attention layers as hypernetworks (and other attention patches) see them."""
from __future__ import annotations

from torch import nn


def kv_projections(unet: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(to_k, to_v) of every attention layer in ``unet`` (diffusers' ``Attention``, ldm's and sgm's
    ``CrossAttention`` all name them so)."""
    return [(m.to_k, m.to_v) for m in unet.modules() if hasattr(m, "to_k") and hasattr(m, "to_v")]


def context_widths(projections: list[tuple[nn.Module, nn.Module]]) -> list[int]:
    """The input widths of the key projections: the text width (cross-attention) and the channel widths
    (self-attention)."""
    return sorted({k.in_features for k, _ in projections})
