"""DreamBooth: peak memory and seconds per step of each memory preset, next to a plain reference loop, on the same
model in the same run.

reference  the straightforward loop: fp32 UNet, torch AdamW (fp32 moments), the VAE and the text encoder on the
           device in fp32, every step encoding its image with the VAE and its prompt with the text encoder, no
           gradient checkpointing.
presets    `train_dreambooth` as users run it (cached latents with the VAE off the device, prompts encoded once with
           the text encoder off the device), with the options each preset names.

Batch 1, no prior preservation (a class image doubles the batch on both sides alike). Peak = CUDA's
max_memory_allocated over the timed steps (weights included); on the CPU the peak resident set over the timed steps
less the process's before the model was built (weights included too; a rough guide). Each run is a
fresh subprocess. A preset whose optimizer is missing (bitsandbytes) is reported as such.

    python bench/dreambooth.py                                          # tiny-sd1, 64 px, CPU
    python bench/dreambooth.py --device cuda --model real-sd1 --resolution 512 --json db.json
    python bench/dreambooth.py --device cuda --model real-sdxl --resolution 1024 \
        --presets "bf16 weights+ckpt+adafactor+fused backward"
    python bench/dreambooth.py --resolution 256 --baseline bench/dreambooth_cpu_256.json   # memory regressions
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Measure, child, images_folder, plain_steps, report  # noqa: E402

PRESETS = {
    "fp16+adamw": dict(precision="fp16", optimizer="adamw"),
    "fp16+ckpt+adamw": dict(precision="fp16", gradient_checkpointing=True, optimizer="adamw"),
    "fp16+ckpt+adamw8bit": dict(precision="fp16", gradient_checkpointing=True, optimizer="adamw8bit"),
    "fp16+ckpt+adafactor": dict(precision="fp16", gradient_checkpointing=True, optimizer="adafactor"),
    "bf16 weights+ckpt+adamw8bit": dict(master_weights="bf16", gradient_checkpointing=True, optimizer="adamw8bit"),
    "bf16 weights+ckpt+adafactor": dict(master_weights="bf16", gradient_checkpointing=True, optimizer="adafactor"),
    "fp16+ckpt+adafactor+fused backward": dict(precision="fp16", gradient_checkpointing=True, optimizer="adafactor",
                                               fused_backward=True),
    "bf16 weights+ckpt+adafactor+fused backward": dict(master_weights="bf16", gradient_checkpointing=True,
                                                       optimizer="adafactor", fused_backward=True),
    "fp16+ckpt+adafactor+EMA": dict(precision="fp16", gradient_checkpointing=True, optimizer="adafactor",
                                    ema_decay=0.999),
    "text encoder too: fp16+ckpt+adamw8bit": dict(precision="fp16", gradient_checkpointing=True,
                                                  optimizer="adamw8bit", train_text_encoder=True),
    "text encoder too: bf16 weights+ckpt+adafactor": dict(master_weights="bf16", gradient_checkpointing=True,
                                                          optimizer="adafactor", train_text_encoder=True),
}


OPTIONS = ("model", "device", "resolution", "steps", "warmup")  # what a child run is given


def run_preset(a, name: str) -> dict:
    from apt_memory import build

    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.dreambooth.trainer import train_dreambooth
    from scal_sdt.host.standalone import load_host

    from presets import rss_mb

    start_mb = rss_mb()  # before the model: on the CPU the peak counts from here (weights included, as on CUDA)
    dev = torch.device(a.device)
    options = dict(PRESETS[name])
    if dev.type == "cpu":
        options.pop("precision", None)
        if options.get("optimizer") == "adamw8bit":
            return {"error": "adamw8bit needs CUDA"}
    host = load_host(build(a.model), a.device)
    out = Path(tempfile.mkdtemp(prefix="db-bench-out-"))
    cfg = DreamBoothConfig(model=a.model, name="bench", instance_data=str(images_folder(a.resolution)),
                           instance_prompt="a photo of sks dog", steps=a.warmup + a.steps, resolution=a.resolution,
                           lr="1e-6", out=str(out), log_dir=str(out / "run"), preview_every=0, save_every=0,
                           device=a.device, keep_checkpoints=1, **options)
    m = Measure(dev, a.warmup, start_mb)
    try:
        train_dreambooth(cfg, host, m.reporter)
    except RuntimeError as e:
        if "bitsandbytes" in str(e):
            return {"error": "bitsandbytes is not installed"}
        raise
    finally:  # a full-size run leaves GBs of checkpoints
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cfg.instance_data, ignore_errors=True)
    return m.result()


def run_reference(a) -> dict:
    from apt_memory import build

    from presets import rss_mb

    start_mb = rss_mb()
    dev = torch.device(a.device)
    comps = build(a.model)
    unet, vae = comps.unet.to(dev).float(), comps.vae.to(dev).float().requires_grad_(False)
    text_encoders = [te.to(dev).float().requires_grad_(False) for te in comps.text_encoders]
    unet.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    m = Measure(dev, a.warmup, start_mb)
    plain_steps(comps, unet, vae, text_encoders, opt, a.warmup + a.steps, a.resolution, m)
    return m.result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sd1", help="tiny-sd1, real-sd1 or real-sdxl (full-size shapes, random "
                    "weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--presets", default="", help="comma-separated preset names (default: all)")
    ap.add_argument("--json", default="", help="write the results here (a later run's --baseline)")
    ap.add_argument("--baseline", default="", help="an earlier --json of the same model, device and resolution: each "
                    "preset's peak against it, exit 1 when one grew by more than --tolerance (memory regressions)")
    ap.add_argument("--tolerance", type=float, default=0.10, help="flag a peak this fraction above the baseline")
    ap.add_argument("--slack-mb", type=float, default=2.0, help="... and at least this many MB above it (CPU noise)")
    ap.add_argument("--run", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        report(run_reference(a) if a.run == "reference" else run_preset(a, a.run))
        return
    names = [n for n in (a.presets.split(",") if a.presets else PRESETS) if n]
    print(f"{a.model} at {a.resolution}px on {a.device}, batch 1, median of {a.steps} steps")
    print(f"{'':48}{'peak MB':>10}{'s/step':>9}{'peak ratio':>12}{'time ratio':>12}", flush=True)
    results = {}
    for name in ["reference", *names]:  # each row as it comes, and the JSON so far: a long run cut short keeps them
        r = results[name] = child(__file__, name, a, OPTIONS)
        ref = results["reference"]
        if "error" in r:
            print(f"{name:48}  {r['error']}", flush=True)
        else:
            pr = r["peak_mb"] / ref["peak_mb"] if ref.get("peak_mb") else float("nan")
            tr = r["s_per_step"] / ref["s_per_step"] if ref.get("s_per_step") else float("nan")
            print(f"{name:48}{r['peak_mb']:10.0f}{r['s_per_step']:9.3f}{pr:12.2f}{tr:12.2f}", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    if a.baseline:
        sys.exit(compare(results, json.loads(Path(a.baseline).read_text()), a.tolerance, a.slack_mb))


def compare(results: dict, baseline: dict, tolerance: float, slack_mb: float) -> int:
    """Each preset's peak against the baseline's: 1 when one grew by more than ``tolerance`` and ``slack_mb``."""
    # a --json file ("args", "results") or a hand-kept measurement file (bench/dreambooth_h200*.json: "runs")
    then, args = baseline.get("results") or baseline["runs"], baseline.get("args", baseline)
    print(f"\nagainst {args.get('model')} at {args.get('resolution')}px on {args.get('device')}:")
    worse = 0
    for name, r in results.items():
        entry = then.get(name, {})
        old = entry.get("peak_mb", entry.get("peak_mib"))
        if "peak_mb" not in r or old is None:
            continue
        ratio = r["peak_mb"] / old
        flag = ratio > 1 + tolerance and r["peak_mb"] - old > slack_mb
        worse += flag
        print(f"{name:48}{old:10.0f} -> {r['peak_mb']:8.0f} MB  x{ratio:.2f}{'  WORSE' if flag else ''}")
    return 1 if worse else 0


if __name__ == "__main__":
    main()
