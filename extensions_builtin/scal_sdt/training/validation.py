"""Held-out loss at fixed timesteps and noises: a number that can be compared between steps and runs."""
from __future__ import annotations

import torch

from ..host.base import Host
from .objective import Objective


@torch.no_grad()
def heldout_loss(host: Host, latents: torch.Tensor, prompts: list[str], embeddings: dict | None = None,
                 timesteps: tuple[int, ...] = (100, 300, 500, 700, 900), seed: int = 1234,
                 objective: Objective | None = None, masks: torch.Tensor | None = None) -> float:
    """The run's diffusion loss (``objective``; default plain MSE) of ``latents`` (scaled, [N, C, h, w]) under
    ``prompts``, over fixed (timestep, noise) pairs, with their loss-weight ``masks`` ([N, 1, h, w]) when given."""
    objective = objective or Objective(host.schedule)
    size = (latents.shape[-2] * host.latent_factor, latents.shape[-1] * host.latent_factor)
    with host.on_device("text", "unet"):
        cond = host.encode_prompts(prompts, embeddings, size=size)
        x0 = latents.to(host.device, torch.float32)
        return objective.heldout(lambda x_t, t: host.predict(x_t, t, cond), x0,
                                 None if masks is None else masks.to(host.device), timesteps, seed)
