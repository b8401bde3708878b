"""LoRA: seconds per step and peak memory of `scal-sdt train-lora` next to a diffusers + peft loop of the
`train_dreambooth_lora` kind, on the same model, data, rank and layers, in the same run.

peft       diffusers' example loop: the UNet frozen in fp32 with peft LoRA layers (``unet.add_adapter``) on the
           attention projections, feed-forward and transformer in/out projections, torch AdamW over them, every step
           encoding its image with the VAE and its prompt with the text encoder (both on the device).
scal-sdt   `train_lora` as users run it (network lora, the same layers and rank; cached latents with the VAE off
           the device, prompts encoded once with the text encoder off the device).

Batch 1. Peak = CUDA's max_memory_allocated over the timed steps; on the CPU the peak resident set over the timed
steps less the process's before the model was built (weights included; a rough guide). Each run is a fresh
subprocess. Needs peft (``pip install 'scal-sdt[bench]'``); it is not a dependency of the package.

    python bench/lora.py                                   # tiny-sd1, 64 px, rank 8, CPU
    python bench/lora.py --device cuda --model real-sd1 --resolution 512 --rank 32
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Measure, child, images_folder, plain_steps, report  # noqa: E402

#: the layers both sides train (diffusers' module names; our "lora" network's targets)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]


def run_ours(a) -> dict:
    from apt_memory import build
    from presets import rss_mb

    from scal_sdt.host.standalone import load_host
    from scal_sdt.lora.config import LoraConfig
    from scal_sdt.lora.trainer import train_lora

    start_mb = rss_mb()
    dev = torch.device(a.device)
    host = load_host(build(a.model), a.device, precision="fp32" if dev.type == "cpu" else "auto")
    out = Path(tempfile.mkdtemp(prefix="lora-bench-out-"))
    cfg = LoraConfig(model=a.model, name="bench", instance_data=str(images_folder(a.resolution)),
                     instance_prompt="a photo of sks dog", network="lora", rank=a.rank, alpha=a.rank,
                     steps=a.warmup + a.steps, resolution=a.resolution, lr="1e-4", out=str(out),
                     log_dir=str(out / "run"), preview_every=0, save_every=0, device=a.device, keep_checkpoints=1,
                     precision="fp32" if dev.type == "cpu" else "fp16")
    m = Measure(dev, a.warmup, start_mb)
    try:
        train_lora(cfg, host, m.reporter)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cfg.instance_data, ignore_errors=True)
    return m.result()


def run_peft(a) -> dict:
    from peft import LoraConfig as PeftLoraConfig

    from apt_memory import build
    from presets import rss_mb

    start_mb = rss_mb()
    dev = torch.device(a.device)
    fp16 = dev.type == "cuda"
    dtype = torch.float16 if fp16 else torch.float32
    comps = build(a.model)
    if comps.family.size_conditioning:
        raise SystemExit("the peft side is written for SD1/SD2 (one text encoder)")
    unet, te, vae = comps.unet.to(dev, dtype), comps.text_encoders[0].to(dev, dtype), comps.vae.to(dev, dtype)
    for m in (unet, te, vae):
        m.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                    target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # the example keeps the trained LoRA weights in fp32 under fp16 mixed precision
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    m = Measure(dev, a.warmup, start_mb)
    plain_steps(comps, unet, vae, [te], opt, a.warmup + a.steps, a.resolution, m, fp16=fp16)
    return m.result()


OPTIONS = ("model", "device", "resolution", "steps", "warmup", "rank")  # what a child run is given


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sd1", help="tiny-sd1 or real-sd1 (full-size shapes, random weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="run both sides this many times, alternating (CPU noise)")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--run", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        report(run_peft(a) if a.run == "peft" else run_ours(a))
        return
    print(f"{a.model} at {a.resolution}px on {a.device}, rank {a.rank}, batch 1, median of {a.steps} steps")
    print(f"{'':12}{'peak MB':>10}{'s/step':>9}", flush=True)
    runs: dict[str, list[dict]] = {"peft": [], "scal-sdt": []}
    for _ in range(a.repeat):
        for name in runs:
            r = child(__file__, name, a, OPTIONS)
            runs[name].append(r)
            print(f"{name:12}" + (f"  {r['error']}" if "error" in r else f"{r['peak_mb']:10.0f}{r['s_per_step']:9.3f}"),
                  flush=True)
    good = {n: [r for r in rs if "error" not in r] for n, rs in runs.items()}
    if all(good.values()):
        med = {n: {k: statistics.median(r[k] for r in rs) for k in ("s_per_step", "peak_mb")} for n, rs in good.items()}
        time_ratio = med["scal-sdt"]["s_per_step"] / med["peft"]["s_per_step"]
        peak_ratio = med["scal-sdt"]["peak_mb"] / med["peft"]["peak_mb"]
        print(f"scal-sdt / peft: time {time_ratio:.2f}x, peak memory {peak_ratio:.2f}x")
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "runs": runs, "median": med,
                                                "time_ratio": time_ratio, "peak_ratio": peak_ratio}, indent=1))


if __name__ == "__main__":
    main()
