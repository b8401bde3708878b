"""What the side-by-side step benches (dreambooth.py, lora.py) share: each measured run in a fresh subprocess that
prints one ``RESULT {json}`` line, a reporter that times each step and reads the peak memory once the warm-up steps
are done, a folder of random training images, and the plain reference loop of diffusers' training examples.

Peak = CUDA's max_memory_allocated over the timed steps (weights included); on the CPU the peak resident set over the
timed steps less the process's before the model was built (weights included too; a rough guide)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULT = "RESULT "


def images_folder(resolution: int, n: int = 4, caption: str = "a photo of sks dog") -> Path:
    """``n`` random RGB pictures of ``resolution`` px, each with ``caption`` beside it, in a new temporary folder."""
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="bench-images-"))
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(resolution, resolution, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return folder


class Measure:
    """A reporter (``.reporter``) that times each step and reads the peak once the warm-up steps are done; a loop of
    one's own calls :meth:`on_step` after each step instead."""

    def __init__(self, device, warmup: int, start_mb: float):
        from scal_sdt.training.report import Reporter

        class R(Reporter):
            def step(inner, info):
                self.on_step(info)
        self.reporter, self.device, self.warmup, self.start_mb = R(), torch.device(device), warmup, start_mb
        self.times, self.peak, self.n = [], 0.0, 0

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_step(self, info=None):
        from presets import peak_rss_mb, reset_peak_rss

        self.sync()
        self.n += 1
        now = time.perf_counter()
        if self.n == self.warmup:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:  # the peak mark restarts at what is held now (weights, optimizer state), as CUDA's does
                reset_peak_rss()
        elif self.n > self.warmup:
            self.times.append(now - self.last)
            self.peak = (torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda"
                         else peak_rss_mb() - self.start_mb)
        self.last = now

    def result(self) -> dict:
        """The median seconds per timed step and the peak (MB)."""
        return {"s_per_step": statistics.median(self.times), "peak_mb": self.peak}


def plain_steps(comps, unet, vae, text_encoders: list, opt, steps: int, resolution: int, m: Measure,
                fp16: bool = False) -> None:
    """The reference side: diffusers' example loop on ``comps`` (its family's schedule), every step encoding one of
    four random images with the VAE and the prompt with the text encoder(s) (SDXL: both towers' penultimate layers,
    the second's pooled output and the sizes), then the UNet's loss, backward and ``opt``'s step; fp16 autocast with a
    grad scaler when ``fp16``. ``m.on_step()`` after each step."""
    from scal_sdt.host.schedule import NoiseSchedule, scaled_linear_alphas_cumprod
    from scal_sdt.host.tokenizer import clip_token_ids

    dev = next(unet.parameters()).device
    dtype = next(vae.parameters()).dtype
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    schedule = NoiseSchedule(scaled_linear_alphas_cumprod(), comps.family.prediction_type)
    g = torch.Generator().manual_seed(0)
    images = torch.rand((4, 3, resolution, resolution), generator=g) * 2 - 1
    ids = clip_token_ids(["a photo of sks dog"]).to(dev)
    for i in range(steps):
        with torch.autocast(dev.type, dtype=torch.float16, enabled=fp16):
            with torch.no_grad():
                x0 = vae.encode(images[i % 4:i % 4 + 1].to(dev, dtype)).latent_dist.sample() * vae.config.scaling_factor
                if len(text_encoders) == 1:
                    context, added = text_encoders[0](input_ids=ids).last_hidden_state, None
                else:
                    first, second = text_encoders
                    out2 = second(input_ids=ids, output_hidden_states=True)
                    context = torch.cat([first(input_ids=ids, output_hidden_states=True).hidden_states[-2],
                                         out2.hidden_states[-2]], dim=-1)
                    added = {"text_embeds": out2.text_embeds,
                             "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]],
                                                      dtype=torch.float32, device=dev)}
            noise = torch.randn(x0.shape, generator=g).to(dev, x0.dtype)
            t = torch.randint(0, 1000, (1,), generator=g).to(dev)
            pred = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=context,
                        added_cond_kwargs=added).sample
            loss = torch.nn.functional.mse_loss(pred.float(), schedule.target(x0, noise, t).float())
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        m.on_step()


def child(script: str, name: str, a, options: tuple[str, ...]) -> dict:
    """Run ``script --run NAME`` with ``a``'s ``options`` in a fresh Python; its ``RESULT`` line as a dict, or
    ``{"error": ...}`` with the last error line."""
    cmd = [sys.executable, script, "--run", name]
    for k in options:
        cmd += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if "rror" in ln] or ["(no error text)"]
        return {"error": f"exit code {proc.returncode}: {tail[-1]}"}
    return json.loads(lines[-1][len(RESULT):])


def report(result: dict) -> None:
    """The child's side: print ``result`` as the ``RESULT`` line :func:`child` reads."""
    print(RESULT + json.dumps(result), flush=True)
