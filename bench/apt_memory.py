"""APT memory and time per step: ours vs the original algorithm's straightforward implementation, same model, same
data, same run, for each configuration (plain, +reconstruction, +discriminator).

original   DreamArtist's way: the doubled batch through the UNet without gradient checkpointing, the whole predicted
           x0 decoded by the VAE with gradients (no checkpointing), the discriminator on the full decoded image.
ours       AptJob as our trainer runs it: gradient checkpointing in the UNet and the VAE decoder, the
           reconstruction decoded on a random crop of --rec-crop latent pixels (0 = whole), the text encoder only
           as far as the placeholders need (the frozen table is never copied).

Both: frozen weights in fp16 with autocast on CUDA (fp32 on the CPU), AdamW on the vectors, latents given (a
trainer caches them), batch --batch. Each (side, configuration) runs in a fresh subprocess; the peak is CUDA's
max_memory_allocated on a GPU (weights included) and, on the CPU, how far the RSS rises above what it was before
the timed steps (activations, gradients, optimizer state; the weights are already there).

    python bench/apt_memory.py                                      # tiny-sd1, 64 px, CPU
    python bench/apt_memory.py --device cuda --model real-sd1 --resolution 512 --rec-crop 32
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
CONFIGS = ("plain", "rec", "disc")


def build(model: str):
    from ti_step import build_components

    comps = build_components(model)
    if model == "real-sd1":  # a full-size SD VAE, so the reconstruction decode costs what it does for users
        from diffusers import AutoencoderKL

        torch.manual_seed(1)
        comps.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                                  block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return comps


def discriminator(model: str, device):
    """ViT-L/14's image tower (CLIP's, random weights: the same size as a real aesthetic scorer) with the LAION
    aesthetic MLP; the toy CLIP's tower with a linear head for the tiny models."""
    import open_clip
    from torch import nn

    from scal_sdt.textual_inversion.discriminator import ClipScore, embed_dim
    from scal_sdt.toy_world.clip_model import load_clip
    from scal_sdt.clip_models import toy_clip_folder

    torch.manual_seed(2)
    clip = open_clip.create_model("ViT-L-14", pretrained=None) if model == "real-sd1" else load_clip(toy_clip_folder())
    dim = embed_dim(clip)
    head = (nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                          nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
            if model == "real-sd1" else nn.Linear(dim, 1))
    return ClipScore(clip.visual, head).to(device)


class RandomLatents:
    """A latent cache stand-in: the same seeded latents every step."""

    def __init__(self, latents):
        self.latents = latents

    def next_batch(self):
        from scal_sdt.training.dataset import Batch

        return Batch(self.latents, ["a picture"] * len(self.latents), None, [])


def run_side(a) -> dict:
    from scal_sdt.host.standalone import StandaloneHost
    from scal_sdt.textual_inversion.apt import AptJob
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.textual_inversion.create import init_vectors

    dev = torch.device(a.device)
    fp16 = dev.type == "cuda"
    host = StandaloneHost(build(a.model), device=dev, dtype=torch.float16 if fp16 else torch.float32)
    ours = a.side == "ours"
    host.set_gradient_checkpointing(ours)
    r = a.resolution // host.latent_factor
    latents = torch.randn((a.batch, 4, r, r), generator=torch.Generator().manual_seed(0)).to(dev)
    cfg = EmbeddingConfig(name="scalapt", mode="apt", vectors=3, neg_vectors=6, resolution=a.resolution,
                          rec_weight=1.0 if a.config == "rec" else 0.0, rec_crop=a.rec_crop if ours else 0,
                          disc_clip="x" if a.config == "disc" else "", disc_head="x" if a.config == "disc" else "")
    disc = discriminator(a.model, dev) if a.config == "disc" else None
    if disc is not None and ours:
        disc.encoder.set_grad_checkpointing(True)
    vec = lambda text, n: {k: torch.nn.Parameter(v.to(dev, torch.float32)) for k, v in init_vectors(host, text, n).items()}  # noqa
    job = AptJob(cfg, host, RandomLatents(latents), vec("*", 3), ["a photo of [name]"], Path("/tmp"), None,
                 vec("", 6), disc)
    params = [p for g in job.param_groups() for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    sync = torch.cuda.synchronize if fp16 else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=fp16):
            loss = job.loss()
        (scaler.scale(loss.float()) if scaler else loss.float()).backward()
        (scaler.step(opt), scaler.update()) if scaler else opt.step()
        return float(loss.detach())

    step()  # warm-up
    sync()
    if fp16:
        torch.cuda.reset_peak_memory_stats(dev)
    from ti_step import _reset_peak_rss

    rss0 = _reset_peak_rss()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if fp16 else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)
    return {"s_per_step": statistics.median(times), "peak_mb": peak}


def child(a, side: str, config: str) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--config", config]
    cmd += [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in ("model", "device", "resolution", "batch", "steps",
                                                                   "rec_crop", "threads")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-sd1", help="tiny-sd1, real-sd1 (full-size SD1, random weights) or a path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rec-crop", type=int, default=4, help="ours: latent pixels of the reconstruction crop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--json", default="")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.side:
        print("RESULT " + json.dumps(run_side(a)))
        return
    unit = "MB (CUDA max allocated)" if a.device.startswith("cuda") else "MB (peak RSS growth during the steps)"
    print(f"APT step on {a.model}, {a.resolution} px, batch {a.batch}, {a.device}; peak memory in {unit}")
    print(f"{'config':<8} {'original MB':>12} {'ours MB':>9} {'ratio':>6}   {'original s':>10} {'ours s':>8} {'ratio':>6}")
    rows = {}
    for config in a.configs.split(","):
        orig, ours = child(a, "original", config), child(a, "ours", config)
        rows[config] = {"original": orig, "ours": ours}
        if "error" in orig or "error" in ours:
            print(f"{config:<8} original: {orig.get('error', 'ok')}  ours: {ours.get('error', 'ok')}")
            continue
        print(f"{config:<8} {orig['peak_mb']:>12.0f} {ours['peak_mb']:>9.0f} {ours['peak_mb'] / orig['peak_mb']:>6.2f}"
              f"   {orig['s_per_step']:>10.3f} {ours['s_per_step']:>8.3f} "
              f"{ours['s_per_step'] / orig['s_per_step']:>6.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
