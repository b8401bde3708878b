"""The WebUI's loaded hypernetworks applied on a Forge-style backend (reForge), which no longer applies them itself.

A1111 applies ``shared.loaded_hypernetworks`` inside every attention forward (to the key and value inputs, chosen
by their width, self-attention included). reForge loads them as A1111 does (the ``<hypernet:NAME:STRENGTH>`` extra
network, the "Add hypernetwork to prompt" option, our Settings choice) but its UNet runs in its backend, whose
call to them is commented out. Its UNet patcher takes attention patches ``fn(n, context_k, context_v,
extra_options) -> (n, context_k, context_v)`` for self-attention (attn1) and cross-attention (attn2): a clone of
the generation's UNet with both patches applies them the way A1111 does, for that generation only."""
from __future__ import annotations

import torch


def transform_kv(hypernetworks, context_k: torch.Tensor, context_v: torch.Tensor):
    """Each hypernetwork's (k, v) modules for this width, in order, as A1111's ``apply_hypernetworks``: widths a
    hypernetwork has no layer for pass unchanged. The modules compute in their own dtype (the WebUI's device, fp32)
    and give back the context's."""
    for hypernetwork in hypernetworks:
        layers = (getattr(hypernetwork, "layers", None) or {}).get(context_k.shape[-1])
        if layers is None:
            continue
        module_k, module_v = layers
        dtype = next(module_k.parameters()).dtype
        context_k = module_k(context_k.to(dtype)).to(context_k.dtype)
        context_v = module_v(context_v.to(dtype)).to(context_v.dtype)
    return context_k, context_v


class HypernetworkPatch:
    """The attention patch for one generation (the hypernetworks loaded when it began)."""

    def __init__(self, hypernetworks):
        self.hypernetworks = list(hypernetworks)

    def __call__(self, n, context_k, context_v, extra_options=None):
        context_k, context_v = transform_kv(self.hypernetworks, context_k, context_v)
        return n, context_k, context_v


def supports(unet_patcher) -> bool:
    return all(hasattr(unet_patcher, name) for name in ("clone", "set_model_attn1_patch", "set_model_attn2_patch"))


def patched_unet(unet_patcher, hypernetworks):
    """A clone of ``unet_patcher`` applying ``hypernetworks`` in every attention layer; None when there are none
    or the backend takes no attention patches."""
    hypernetworks = [h for h in hypernetworks if h is not None]
    if not hypernetworks or not supports(unet_patcher):
        return None
    unet = unet_patcher.clone()
    patch = HypernetworkPatch(hypernetworks)
    unet.set_model_attn1_patch(patch)
    unet.set_model_attn2_patch(patch)
    return unet
