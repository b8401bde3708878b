"""Hypernetwork training step: ours vs the WebUI's way, side by side on the same frozen model and data.

ours       HypernetworkJob.loss: conditioning cached per prompt, the hypernetwork applied by forward pre-hooks on
           every attention's to_k / to_v (host/attention.py), the one loop's AdamW.
reference  the WebUI's train_hypernetwork as it computes: conditioning precomputed per image, the hypernetwork
           applied inside each attention forward to the context (``apply_hypernetworks``: k from hn_k(context), v from
           hn_v(context); self-attention's context is the hidden state), here as a diffusers attention processor.

Both: the same hypernetwork weights (seeded), latents, prompts, noises and timesteps, AdamW, warm-up then timed
steps, fp32 on the CPU. Each side runs in a fresh subprocess so its peak RSS is its own. Prints ms/step and peak
RSS per side and the ratios ours/reference, and checks both compute the same loss at the first step.

    python bench/hypernetwork_step.py                        # the toy model, 64 px, batch 4
    python bench/hypernetwork_step.py --model tiny-sdxl --steps 10
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

PROMPT = "a red star on a white background"


def make(model: str, batch: int, seed: int):
    from scal_sdt.host.attention import context_widths
    from scal_sdt.host.standalone import load_host
    from scal_sdt.hypernetwork.module import create_hypernetwork

    host = load_host(model, device="cpu")
    hn = create_hypernetwork("bench", context_widths(host.kv_projections()), "1, 2, 1", "relu", "XavierNormal",
                             seed=seed)
    gen = torch.Generator().manual_seed(seed)
    side = host.native_resolution // host.latent_factor
    latents = torch.randn(batch, host.components.unet.config.in_channels, side, side, generator=gen)
    return host, hn, latents


def run_ours(host, hn, latents, seed):
    from scal_sdt.hypernetwork.config import HypernetworkConfig
    from scal_sdt.hypernetwork.trainer import HypernetworkJob

    batch = SimpleNamespace(latents=latents, captions=[PROMPT] * len(latents), weights=None)
    data = SimpleNamespace(next_batch=lambda: batch, items=[])
    job = HypernetworkJob(HypernetworkConfig(name="bench", seed=seed, template="filewords"), host, data, hn,
                          ["[filewords]"], Path("."))
    return job.loss


class WebUIStyleAttention:
    """The WebUI's attention with ``apply_hypernetworks``: the context is transformed for k and v separately."""

    def __init__(self, hn):
        self.hn = hn

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        pair = self.hn.layers.get(context.shape[-1])
        ck, cv = (pair[0](context), pair[1](context)) if pair else (context, context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(ck), attn.to_v(cv)
        b, h = q.shape[0], attn.heads
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, q.shape[-1] * h)
        return attn.to_out[1](attn.to_out[0](out))


def run_reference(host, hn, latents, seed):
    unet = host.components.unet
    unet.set_attn_processor(WebUIStyleAttention(hn))
    with torch.no_grad():
        cond = host.encode_prompts([PROMPT] * len(latents), size=(host.native_resolution,) * 2)  # precomputed
    gen = torch.Generator().manual_seed(seed)
    schedule = host.schedule

    def loss():
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, schedule.num_steps, (len(latents),), generator=gen)
        hn.train(True)
        out = host.predict(schedule.add_noise(latents, noise, t), t, cond)
        return F.mse_loss(out.float(), schedule.target(latents, noise, t).float())
    return loss


def side(args) -> dict:
    torch.manual_seed(args.seed)
    host, hn, latents = make(args.model, args.batch, args.seed)
    loss_fn = (run_ours if args.side == "ours" else run_reference)(host, hn, latents, args.seed)
    hn.train(True)
    opt = torch.optim.AdamW(hn.parameters(), lr=1e-5)
    first, times = None, []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == 0:
            first = float(loss)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"side": args.side, "ms_per_step": 1000 * sorted(times)[len(times) // 2], "first_loss": first,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        print(json.dumps(side(a)))
        return
    results = {}
    for name in ("ours", "reference"):
        cmd = [sys.executable, __file__, "--side", name] + [f"--{k}={v}" for k, v in vars(a).items() if k != "side"]
        results[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    ours, ref = results["ours"], results["reference"]
    print(f"{a.model}, batch {a.batch}: ours {ours['ms_per_step']:.1f} ms/step, {ours['peak_rss_mb']:.0f} MB; "
          f"reference {ref['ms_per_step']:.1f} ms/step, {ref['peak_rss_mb']:.0f} MB")
    print(f"ratios ours/reference: time {ours['ms_per_step'] / ref['ms_per_step']:.2f}x, "
          f"peak RSS {ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x; first-step loss {ours['first_loss']:.6f} vs "
          f"{ref['first_loss']:.6f}")


if __name__ == "__main__":
    main()
