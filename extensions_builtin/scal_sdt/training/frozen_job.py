"""What every trainer on a frozen model's diffusion loss shares (Textual Inversion, hypernetworks): the noise and
prompt generators, prompts from templates, one noised batch, the (masked) loss, fixed-seed previews, validation
at fixed timesteps and noises, and the state a resume restores. A trainer subclasses :class:`FrozenModelJob` and
sets ``cfg``, ``host``, ``dataset``, ``templates``, ``run_dir`` and ``validation``."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..host.base import Host
from .dataset import Batch, LatentDataset
from .state import as_tuple
from .templates import process_tags, render


def image_grid(images: list, columns: int = 4):
    """Images side by side, ``columns`` to a row."""
    from PIL import Image

    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    cols = min(columns, len(images))
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


@dataclass
class NoisedBatch:
    batch: Batch
    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor  # x0 noised to t
    size: tuple[int, int]  # (height, width) in pixels

    def squared_error(self, host: Host, out: torch.Tensor) -> torch.Tensor:
        return (out.float() - host.schedule.target(self.x0, self.noise, self.t).float()) ** 2

    def loss(self, host: Host, out: torch.Tensor) -> torch.Tensor:
        """Mean squared error against the schedule's target, weighted by the batch's masks when it has them."""
        err = self.squared_error(host, out)
        if self.batch.weights is not None:
            w = self.batch.weights.to(err.device, err.dtype)
            return (err * w).sum() / (w.sum() * err.shape[1]).clamp_min(1e-8)
        return err.mean()

    def image_losses(self, host: Host, out: torch.Tensor) -> torch.Tensor:
        """The same error per image [B] (each image's masked mean), for a per-timestep weighting such as min-SNR."""
        err = self.squared_error(host, out)
        dims = tuple(range(1, err.dim()))
        if self.batch.weights is not None:
            w = self.batch.weights.to(err.device, err.dtype).expand_as(err)
            return (err * w).sum(dims) / w.sum(dims).clamp_min(1e-8)
        return err.mean(dims)


class FrozenModelJob:
    cfg: object
    host: Host
    dataset: LatentDataset
    templates: list[str]
    run_dir: Path
    validation: LatentDataset | None

    def start_generators(self) -> None:
        self.name = self.cfg.name
        self.noise = torch.Generator("cpu").manual_seed(self.cfg.seed)
        self.prompt_rng = random.Random(self.cfg.seed)

    def prompts_for(self, captions: list[str]) -> list[str]:
        out = []
        for caption in captions:
            words = process_tags(caption, self.cfg.shuffle_tags, self.cfg.tag_dropout, self.cfg.keep_tokens,
                                 self.prompt_rng)
            out.append(render(self.prompt_rng.choice(self.templates), self.name, words))
        return out

    def noised_batch(self, dataset: LatentDataset | None = None, noise_offset: float = 0.0) -> NoisedBatch:
        """The next micro-batch (of ``dataset``, default the job's) with noise and timesteps drawn from the job's
        generator (on the CPU, so a run is the same on every device); ``noise_offset`` adds that much of one random
        value per image and channel to the noise (offset noise: darker darks, brighter brights)."""
        batch = (dataset or self.dataset).next_batch()
        host, schedule = self.host, self.host.schedule
        x0 = batch.latents.to(host.device, torch.float32)
        noise = torch.randn(x0.shape, generator=self.noise)
        if noise_offset:
            noise = noise + noise_offset * torch.randn((*x0.shape[:2], 1, 1), generator=self.noise)
        noise = noise.to(host.device)
        t = torch.randint(0, schedule.num_steps, (x0.shape[0],), generator=self.noise).to(host.device)
        size = (x0.shape[-2] * host.latent_factor, x0.shape[-1] * host.latent_factor)
        return NoisedBatch(batch, x0, noise, t, schedule.add_noise(x0, noise, t), size)

    def preview_grid(self, step: int, sample: Callable[..., list]) -> tuple[list, list[Path]]:
        """A fixed-seed grid of the preview prompts ('|' separates several; by default, as in the WebUI, the first
        template line with the first image's caption; ``[name]`` in a prompt is the trained name) at the training size, by ``sample(prompts, **settings)``."""
        prompts = [p.strip().replace("[name]", self.name) for p in self.cfg.preview_prompt.split("|") if p.strip()]
        prompts = prompts or [render(self.templates[0], self.name, self.dataset.items[0].caption)]
        seed = self.cfg.preview_seed if self.cfg.preview_seed >= 0 else self.cfg.seed
        size = self.cfg.resolution or self.host.native_resolution
        images = sample(prompts, negative=self.cfg.preview_negative, steps=self.cfg.preview_steps,
                        cfg_scale=self.cfg.preview_cfg, seed=seed, width=size, height=size)
        path = self.run_dir / "images" / f"{self.name}-{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images).save(path)
        return images, [path]

    def validation_mean(self, loss_of: Callable[[torch.Tensor, list[str]], float]) -> float | None:
        """Mean of ``loss_of(latents, prompts)`` over the held-out images with their first-template prompts."""
        if self.validation is None:
            return None
        batches = [self.validation.next_batch() for _ in range(self.validation.len_epoch)]
        self.validation.load_state_dict({"epoch": 0, "position": 0, "seed": self.cfg.seed})
        losses = [loss_of(b.latents, [render(self.templates[0], self.name, c) for c in b.captions]) for b in batches]
        return sum(losses) / len(losses)

    def state_dict(self) -> dict:
        return {"data": self.dataset.state_dict(), "noise": self.noise.get_state(),
                "prompt_rng": self.prompt_rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state["data"])
        self.noise.set_state(state["noise"])
        self.prompt_rng.setstate(as_tuple(state["prompt_rng"]))
