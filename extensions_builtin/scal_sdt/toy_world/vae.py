"""The toy VAE: SD's ``AutoencoderKL`` layout (4 levels, latent factor 8, 4 latent channels) at tiny widths,
trained on the toy world as SD's was (reconstruction + a very small KL term), then given the scale factor that
makes its latents unit-variance, as SD's 0.18215 does."""
from __future__ import annotations

import time

import torch
from diffusers import AutoencoderKL

from ..host.families import SD1
from ..host.tiny import vae_config
from .optim import warmup_cosine
from .pool import ScenePool

KL_WEIGHT = 1e-6


def shape_weights(x: torch.Tensor, boost: float = 4.0) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, H, W]: 1 on the background (each image's median colour), 1 + ``boost`` where a
    pixel differs from it — the shape, a few percent of the image, carries what a prompt asks for."""
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    return 1.0 + boost * ((x - median).abs().sum(1, keepdim=True) > 0.15).float()


def train_vae(pool: ScenePool, steps: int, seed: int, batch_size: int = 32, crop: int = 32, lr: float = 1e-3,
              full_fraction: float = 0.2, log=None) -> AutoencoderKL:
    """Train on random ``crop``-px crops (fast), then for the last ``full_fraction`` of the steps on whole images
    at half the batch (GroupNorm's statistics differ between crops and whole images, which would shift colours),
    with flips; shape-weighted L1 + MSE reconstruction + ``KL_WEIGHT`` x KL. Deterministic for a seed and thread
    count."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(), scaling_factor=SD1.vae_scale)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, floor=0.05)
    side = pool.pixels.shape[-1]
    full_from = steps - int(steps * full_fraction)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        full = step >= full_from or not 0 < crop < side
        n = batch_size // 2 if full and 0 < crop < side else batch_size
        idx = torch.randint(0, len(pool), (n,), generator=gen)
        x = pool.batch(idx, torch.rand(n, generator=gen) < 0.5)
        if not full:
            oy, ox = (torch.randint(0, (side - crop) // 8 + 1, (2,), generator=gen) * 8).tolist()
            x = x[:, :, oy:oy + crop, ox:ox + crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        w = shape_weights(x)
        err = recon - x
        rec = ((err.abs() + err.square()) * w).sum() / (w.sum() * x.shape[1])
        loss = rec + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"vae step {step} rec {rec.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval().requires_grad_(False)
    calibrate_scale(vae, pool)
    return vae


@torch.no_grad()
def calibrate_scale(vae: AutoencoderKL, pool: ScenePool, n: int = 512) -> float:
    """Set the scale factor so that the scaled latent means of ``n`` pool images have unit standard deviation."""
    n = min(n, len(pool))
    mean = torch.cat([vae.encode(pool.batch(torch.arange(i, min(i + 128, n)))).latent_dist.mean
                      for i in range(0, n, 128)])
    scale = round(float(1.0 / mean.std()), 5)
    vae.register_to_config(scaling_factor=scale)
    return scale


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, pool: ScenePool, n: int = 256) -> float:
    """Mean absolute error (pixels in [-1, 1]) of encode -> decode over the first ``n`` images at full size."""
    errs, n = [], min(n, len(pool))
    for i in range(0, n, 64):
        x = pool.batch(torch.arange(i, min(i + 64, n)))
        errs.append((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean(dim=(1, 2, 3)))
    return float(torch.cat(errs).mean())
