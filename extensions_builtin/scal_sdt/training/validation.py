"""Held-out loss at fixed timesteps and noises: a number that can be compared between steps and runs."""
from __future__ import annotations

import torch

from ..host.base import Host


@torch.no_grad()
def heldout_loss(host: Host, latents: torch.Tensor, prompts: list[str], embeddings: dict | None = None,
                 timesteps: tuple[int, ...] = (100, 300, 500, 700, 900), seed: int = 1234) -> float:
    """Mean diffusion loss of ``latents`` (scaled, [N, C, h, w]) under ``prompts`` over fixed (timestep, noise) pairs."""
    gen = torch.Generator("cpu").manual_seed(seed)
    schedule = host.schedule
    size = (latents.shape[-2] * host.latent_factor, latents.shape[-1] * host.latent_factor)
    total = 0.0
    with host.on_device("text", "unet"):
        cond = host.encode_prompts(prompts, embeddings, size=size)
        x0 = latents.to(host.device, torch.float32)
        for t_value in timesteps:
            noise = torch.randn(x0.shape, generator=gen).to(host.device)
            t = torch.full((x0.shape[0],), t_value, dtype=torch.long, device=host.device)
            out = host.predict(schedule.add_noise(x0, noise, t), t, cond)
            total += float(((out.float() - schedule.target(x0, noise, t).float()) ** 2).mean())
    return total / len(timesteps)
