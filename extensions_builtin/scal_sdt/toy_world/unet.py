"""The toy UNet: SD1's ``UNet2DConditionModel`` layout at tiny widths, trained on the toy world's latents as SD1
was (epsilon prediction on the scaled-linear schedule, captions dropped 10% of the time for classifier-free
guidance), conditioned on the frozen toy CLIP text tower, with min-SNR loss weighting and an EMA of the weights."""
from __future__ import annotations

import copy
import random
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.nn import functional as F

from ..host.families import SD1
from ..host.schedule import NoiseSchedule, scaled_linear_alphas_cumprod
from ..host.tiny import unet_config
from ..host.tokenizer import clip_token_ids as token_ids
from .optim import warmup_cosine
from .pool import ScenePool, mirrored, random_caption

BLOCK_OUT_CHANNELS = (64, 64, 64, 64)
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0


def build_unet(context_dim: int, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**dict(unet_config(SD1, context_dim), block_out_channels=BLOCK_OUT_CHANNELS))


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, pool: ScenePool, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latent means of every pool image and of its mirror image: ([N, 4, h, w], [N, 4, h, w])."""
    plain, flipped = [], []
    for i in range(0, len(pool), batch):
        x = pool.batch(torch.arange(i, min(i + batch, len(pool))))
        plain.append(vae.encode(x).latent_dist.mean)
        flipped.append(vae.encode(x.flip(3)).latent_dist.mean)
    sf = vae.config.scaling_factor
    return torch.cat(plain) * sf, torch.cat(flipped) * sf


def train_unet(pool: ScenePool, vae: AutoencoderKL, text_encoder, steps: int, seed: int, batch_size: int = 64,
               lr: float = 1e-3, ema_decay: float = 0.999, log=None, every=None,
               device: str = "cpu") -> UNet2DConditionModel:
    """Train a fresh SD1-layout UNet; returns its EMA weights (on the CPU). Deterministic for a seed and thread
    count on the CPU (the shipped build); ``device`` "cuda" for experiments (draws stay on the CPU generator).
    ``every`` = (n, fn): ``fn(step, ema)`` after every n steps (for measuring while it trains)."""
    unet = build_unet(text_encoder.config.hidden_size, seed).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    schedule = NoiseSchedule(scaled_linear_alphas_cumprod(), SD1.prediction_type)
    alphas = schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # min-SNR-gamma for epsilon prediction
    t0 = time.time()
    latents, latents_flipped = encode_pool(vae, pool)
    if log:
        log(f"unet: encoded {len(pool)} images x2 ({time.time() - t0:.0f}s)")
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(f"toy-unet/{seed}")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps, floor=0.05)
    unet.train()
    for step in range(steps):
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
        flips = torch.rand(batch_size, generator=gen) < 0.5
        x0 = torch.where(flips[:, None, None, None], latents_flipped[idx], latents[idx])
        captions = []
        for i, f in zip(idx.tolist(), flips.tolist()):
            scene = mirrored(pool.scenes[i]) if f else pool.scenes[i]
            captions.append("" if rng.random() < CAPTION_DROPOUT else random_caption(scene, rng))
        with torch.no_grad():
            context = text_encoder(input_ids=token_ids(captions).to(device)).last_hidden_state
        t = torch.randint(0, len(alphas), (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(x_t.to(device), t.to(device), encoder_hidden_states=context).sample
        loss = (F.mse_loss(pred, noise.to(device), reduction="none").mean(dim=(1, 2, 3)) * weight[t].to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"unet step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if every and (step + 1) % every[0] == 0:
            every[1](step + 1, ema)
    return ema.cpu().eval()
