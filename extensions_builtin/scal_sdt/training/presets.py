"""Memory presets for Textual Inversion and LoRA: option overrides by card size (VRAM) and model family.

What a TI step holds on the card: the frozen fp16 weights of the UNet and text encoder(s) (SD1 ≈ 1.7 + 0.25 GB,
SD2 ≈ 1.7 + 0.7 GB, SDXL ≈ 5.1 + 1.6 GB; the VAE is parked once the latents are cached), and the UNet's activations,
kept for the backward pass down to the prompt vectors, which grow with batch × pixels (SD1 512², SD2 768²,
SDXL 1024²). The trainable state is a few vectors, so an 8-bit optimizer saves nothing and every preset keeps AdamW.
A LoRA step holds the same: the frozen weights, never copied (the adapters run beside the layers), and the UNet's
activations, which the backward pass needs down to the adapters of its first blocks (each adapter adds only its
rank-wide intermediate). Its trainable state is small (SD1 rank 16: ≈ 10 M weights, with their gradients and
AdamW's two moments ≈ 0.2 GB; SDXL ≈ 0.4 GB), so the same presets serve it, AdamW included; not measured on a card
yet (bench/presets.py --method lora --device cuda).
Gradient accumulation keeps the effective batch (batch_size × grad_accum) at about 4 wherever the card cannot hold
4 images at once, so a smaller card trains the same thing, only slower. 6 and 8 GB cards are mostly Pascal/Turing
(no fast bf16), hence fp16 with the grad scaler there; 12 and 24 GB cards are mostly Ampere or newer, hence bf16,
which does not overflow in SD2's and SDXL's attention. On 24 GB the VAE (≈ 0.2 GB) stays on the card, which saves
moving it for every preview. Resolution and latent sampling are left to the user: they
change what is learned, not only how much memory it takes.

A preset only fills in options the user did not give: :func:`apply_preset` skips every name in ``explicit``.
"""
from __future__ import annotations

import dataclasses

PRESETS: dict[str, dict[str, dict]] = {
    "6gb": {
        # 2 GB of weights fit; checkpointing shrinks 512² activations; medvram: caching, previews hold one part at once
        "sd1": dict(batch_size=1, grad_accum=4, precision="fp16", gradient_checkpointing=True, memory_mode="medvram",
                    offload_vae=True, optimizer="adamw"),
        # 2.4 GB of weights and 768² activations: as SD1; checkpointing is what makes 768 px fit
        "sd2": dict(batch_size=1, grad_accum=4, precision="fp16", gradient_checkpointing=True, memory_mode="medvram",
                    offload_vae=True, optimizer="adamw"),
        # 6.7 GB of weights alone exceed the card: lowvram streams the UNet blocks, checkpointing, batch 1
        "sdxl": dict(batch_size=1, grad_accum=4, precision="fp16", gradient_checkpointing=True, memory_mode="lowvram",
                     offload_vae=True, optimizer="adamw"),
    },
    "8gb": {
        # checkpointing leaves room for two 512² images at once
        "sd1": dict(batch_size=2, grad_accum=2, precision="fp16", gradient_checkpointing=True, memory_mode="normal",
                    offload_vae=True, optimizer="adamw"),
        # one 768² image at a time with checkpointing; everything stays on the card
        "sd2": dict(batch_size=1, grad_accum=4, precision="fp16", gradient_checkpointing=True, memory_mode="normal",
                    offload_vae=True, optimizer="adamw"),
        # 6.7 GB of weights fit only with nothing else resident: medvram + checkpointing, batch 1
        "sdxl": dict(batch_size=1, grad_accum=4, precision="fp16", gradient_checkpointing=True, memory_mode="medvram",
                     offload_vae=True, optimizer="adamw"),
    },
    "12gb": {
        # four 512² images fit without checkpointing (about 1.5 GB of activations each): full speed
        "sd1": dict(batch_size=4, grad_accum=1, precision="bf16", gradient_checkpointing=False, memory_mode="normal",
                    offload_vae=True, optimizer="adamw"),
        # two 768² images at once with checkpointing
        "sd2": dict(batch_size=2, grad_accum=2, precision="bf16", gradient_checkpointing=True, memory_mode="normal",
                    offload_vae=True, optimizer="adamw"),
        # weights fit beside 1024² activations only with checkpointing, one image at a time
        "sdxl": dict(batch_size=1, grad_accum=4, precision="bf16", gradient_checkpointing=True, memory_mode="normal",
                     offload_vae=True, optimizer="adamw"),
    },
    "24gb": {
        # eight 512² images at once without checkpointing (≈ 14 GB): the fastest, effective batch 8
        "sd1": dict(batch_size=8, grad_accum=1, precision="bf16", gradient_checkpointing=False, memory_mode="normal",
                    offload_vae=False, optimizer="adamw"),
        # four 768² images without checkpointing (≈ 16 GB)
        "sd2": dict(batch_size=4, grad_accum=1, precision="bf16", gradient_checkpointing=False, memory_mode="normal",
                    offload_vae=False, optimizer="adamw"),
        # four 1024² images at once still need checkpointing beside 6.7 GB of weights
        "sdxl": dict(batch_size=4, grad_accum=1, precision="bf16", gradient_checkpointing=True, memory_mode="normal",
                     offload_vae=False, optimizer="adamw"),
    },
}
FAMILIES = ("sd1", "sd2", "sdxl")
NO_PRESET = ""  # the value of a preset option that applies nothing


def preset_names() -> tuple[str, ...]:
    """The presets, smallest card first."""
    return tuple(PRESETS)


def preset_overrides(preset: str, family: str, table: dict | None = None) -> dict:
    """The option values ``preset`` sets for ``family`` (in ``table``, default :data:`PRESETS`; a method whose memory
    differs has its own, as DreamBooth); raises naming the choices for an unknown one."""
    table = PRESETS if table is None else table
    if preset not in table:
        raise ValueError(f"preset must be one of {', '.join(table)}, not {preset!r}")
    if family not in table[preset]:
        raise ValueError(f"preset {preset!r} has no settings for model family {family!r}; families are "
                         f"{', '.join(table[preset])}")
    return dict(table[preset][family])


def apply_preset(cfg, family: str, explicit=frozenset(), preset: str | None = None, table: dict | None = None):
    """``cfg`` with the options of ``preset`` (default ``cfg.preset``) for ``family`` filled in, from ``table``
    (default :data:`PRESETS`).

    Options named in ``explicit`` (those the user gave) keep their value. An empty preset returns ``cfg`` as is.
    The result is built with ``dataclasses.replace``, so the config validates it again.
    """
    name = cfg.preset if preset is None else preset
    if name == NO_PRESET:
        return cfg
    overrides = {k: v for k, v in preset_overrides(name, family, table).items() if k not in explicit}
    return dataclasses.replace(cfg, **overrides)
