"""What every trainer on a frozen model's diffusion loss shares (Textual Inversion, hypernetworks): the noise and
prompt generators, prompts from templates, one noised batch and its loss (the run's :class:`~.objective.Objective`),
fixed-seed previews, validation at fixed timesteps and noises, and the state a resume restores. A trainer subclasses
:class:`FrozenModelJob` and sets ``cfg``, ``host``, ``dataset``, ``templates``, ``run_dir`` and ``validation``."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import torch

from ..host.base import Host
from .dataset import LatentDataset
from .objective import NoisedBatch, Objective
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
        self.objective = Objective.of(self.cfg, self.host.schedule)

    def caption_words(self, caption: str) -> str:
        """The caption as this step uses it: dropped whole with probability ``caption_dropout``, else its tags
        shuffled and dropped as asked (the first ``keep_tokens`` stay)."""
        if self.cfg.caption_dropout and self.prompt_rng.random() < self.cfg.caption_dropout:
            return ""
        return process_tags(caption, self.cfg.shuffle_tags, self.cfg.tag_dropout, self.cfg.keep_tokens,
                            self.prompt_rng)

    def prompts_for(self, captions: list[str]) -> list[str]:
        out = []
        for caption in captions:
            words = self.caption_words(caption)
            out.append(render(self.prompt_rng.choice(self.templates), self.name, words))
        return out

    def noised_batch(self, dataset: LatentDataset | None = None) -> NoisedBatch:
        """The next micro-batch (of ``dataset``, default the job's), noised by the run's objective with draws from
        the job's generator (on the CPU, so a run is the same on every device)."""
        batch = (dataset or self.dataset).next_batch()
        return self.objective.noised(batch, self.noise, self.host.device, self.host.latent_factor)

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

    def validation_mean(self, loss_of: Callable[[torch.Tensor, list[str], torch.Tensor | None], float]) -> float | None:
        """Mean of ``loss_of(latents, prompts, masks)`` over the held-out images with their first-template prompts
        (``masks``: their loss weights, None when they have none)."""
        if self.validation is None:
            return None
        batches = [self.validation.next_batch() for _ in range(self.validation.len_epoch)]
        self.validation.load_state_dict({"epoch": 0, "position": 0, "seed": self.cfg.seed})
        losses = [loss_of(b.latents, [render(self.templates[0], self.name, c) for c in b.captions], b.weights)
                  for b in batches]
        return sum(losses) / len(losses)

    def state_dict(self) -> dict:
        return {"data": self.dataset.state_dict(), "noise": self.noise.get_state(),
                "prompt_rng": self.prompt_rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state["data"])
        self.noise.set_state(state["noise"])
        self.prompt_rng.setstate(as_tuple(state["prompt_rng"]))
