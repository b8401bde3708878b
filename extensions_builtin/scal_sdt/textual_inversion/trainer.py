"""Train a Textual Inversion embedding: only the placeholder vectors learn; the model stays frozen."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import to_dict
from ..host.base import Host
from ..training.dataset import LatentDataset
from ..training.loop import LoopResult, resolve_precision, run_loop
from ..training.report import ConsoleReporter, Reporter
from ..training.run_setup import prepare_data, run_dir_for
from ..training.state import as_tuple
from ..training.templates import load_template, process_tags, render
from ..training.validation import heldout_loss
from .config import EmbeddingConfig
from .create import file_vectors, embedding_path, existing_embeddings, init_vectors
from .format import Embedding, save_embedding


@dataclass
class EmbeddingJob:
    """What Textual Inversion gives the loop: the vectors, the diffusion loss, how to save and preview."""

    cfg: EmbeddingConfig
    host: Host
    dataset: LatentDataset
    vectors: dict[str, torch.nn.Parameter]
    templates: list[str]
    run_dir: Path
    validation: LatentDataset | None = None

    def __post_init__(self):
        self.name = self.cfg.name
        self.noise = torch.Generator("cpu").manual_seed(self.cfg.seed)
        self.prompt_rng = random.Random(self.cfg.seed)

    def param_groups(self):
        return [{"params": list(self.vectors.values())}]

    def prompts_for(self, captions: list[str]) -> list[str]:
        out = []
        for caption in captions:
            words = process_tags(caption, self.cfg.shuffle_tags, self.cfg.tag_dropout, self.cfg.keep_tokens, self.prompt_rng)
            out.append(render(self.prompt_rng.choice(self.templates), self.name, words))
        return out

    def loss(self) -> torch.Tensor:
        batch = self.dataset.next_batch()
        host, schedule = self.host, self.host.schedule
        x0 = batch.latents.to(host.device, torch.float32)
        noise = torch.randn(x0.shape, generator=self.noise).to(host.device)
        t = torch.randint(0, schedule.num_steps, (x0.shape[0],), generator=self.noise).to(host.device)
        size = (x0.shape[-2] * host.latent_factor, x0.shape[-1] * host.latent_factor)
        with host.on_device("text", "unet"):  # the text encoder stays on the device for the backward pass
            cond = host.encode_prompts(self.prompts_for(batch.captions), {self.name: dict(self.vectors)}, size=size)
            out = host.predict(schedule.add_noise(x0, noise, t), t, cond)
        err = (out.float() - schedule.target(x0, noise, t).float()) ** 2
        if batch.weights is not None:
            w = batch.weights.to(err.device, err.dtype)
            return (err * w).sum() / (w.sum() * err.shape[1]).clamp_min(1e-8)
        return err.mean()

    def embedding(self, step: int) -> Embedding:
        vectors = file_vectors(self.host, {k: v.detach().float().cpu().clone() for k, v in self.vectors.items()})
        meta = {"scal_sdt": json.dumps(to_dict(self.cfg)), "trainer": "scal-sdt textual inversion"}
        return Embedding(name=self.name, vectors=vectors, step=step, sd_checkpoint=self.host.model_hash,
                         sd_checkpoint_name=self.host.model_name, meta=meta)

    def save(self, step: int, final: bool) -> Path:
        if final:
            path = embedding_path(Path(self.cfg.out), self.name, self.cfg.format)
        else:
            path = self.run_dir / "embeddings" / f"{self.name}-{step}.{self.cfg.format}"
        return save_embedding(self.embedding(step), path, self.cfg.format)

    def preview(self, step: int):
        """A fixed-seed grid of the preview prompts ('|' separates several), rendered by the host's own sampler."""
        prompts = [p.strip() for p in self.cfg.preview_prompt.split("|") if p.strip()]
        prompts = prompts or [render(self.templates[0], self.name, "")]
        seed = self.cfg.preview_seed if self.cfg.preview_seed >= 0 else self.cfg.seed
        vectors = {k: v.detach() for k, v in self.vectors.items()}
        size = self.cfg.resolution or self.host.native_resolution  # previews at the training size
        images = self.host.sample(prompts, negative=self.cfg.preview_negative, steps=self.cfg.preview_steps,
                                  cfg_scale=self.cfg.preview_cfg, seed=seed, width=size, height=size,
                                  embeddings={self.name: vectors})
        path = self.run_dir / "images" / f"{self.name}-{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images).save(path)
        return images, [path]

    def validation_loss(self) -> float | None:
        """Held-out images with their first-template prompts, at fixed timesteps and noises."""
        if self.validation is None:
            return None
        batches = [self.validation.next_batch() for _ in range(self.validation.len_epoch)]
        self.validation.load_state_dict({"epoch": 0, "position": 0, "seed": self.cfg.seed})
        losses = []
        for batch in batches:
            prompts = [render(self.templates[0], self.name, caption) for caption in batch.captions]
            losses.append(heldout_loss(self.host, batch.latents, prompts, {self.name: dict(self.vectors)},
                                       seed=self.cfg.seed))
        return sum(losses) / len(losses)

    def state_dict(self) -> dict:
        return {"data": self.dataset.state_dict(), "noise": self.noise.get_state(),
                "prompt_rng": self.prompt_rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state["data"])
        self.noise.set_state(state["noise"])
        self.prompt_rng.setstate(as_tuple(state["prompt_rng"]))


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


def templates_with_name(template: str, reporter: Reporter) -> list[str]:
    """The template's lines that mention [name]; an embedding only learns from prompts that contain it."""
    lines = load_template(template)
    usable = [line for line in lines if "[name]" in line]
    if not usable:
        raise ValueError(f"template {template!r} has no line with [name], so the embedding would never be used in a "
                         f"prompt; choose subject, subject_filewords, style or style_filewords")
    if len(usable) < len(lines):
        reporter.message(f"template {template!r}: {len(lines) - len(usable)} line(s) without [name] are left out")
    return usable


def train_embedding(cfg: EmbeddingConfig, host: Host, reporter: Reporter | None = None) -> LoopResult:
    """Create (or resume) the embedding ``cfg.name`` and train it on ``cfg.data``."""
    reporter = reporter or ConsoleReporter()
    run_dir = run_dir_for(cfg)
    out_dir = Path(cfg.out)
    if not cfg.resume and not cfg.overwrite and (clash := existing_embeddings(out_dir, cfg.name)):
        raise FileExistsError(f"embedding {cfg.name!r} already exists ({clash[0]}); choose another name, pass "
                              f"--overwrite to replace it, or --resume to continue its run")
    resolution = cfg.resolution or host.native_resolution
    dataset, validation = prepare_data(cfg, host, reporter, resolution)
    start = init_vectors(host, cfg.init_text, cfg.vectors)
    vectors = {k: torch.nn.Parameter(v.to(host.device, torch.float32)) for k, v in start.items()}
    if cfg.gradient_checkpointing:
        host.set_gradient_checkpointing(True)
    job = EmbeddingJob(cfg, host, dataset, vectors, templates_with_name(cfg.template, reporter), run_dir, validation)
    reporter.message(f"training embedding {cfg.name!r} ({cfg.vectors} vector(s), widths {host.widths}) on "
                     f"{host.model_name} [{host.family.name}, {host.device}], {len(dataset.items)} images at {resolution}px")
    precision = resolve_precision(cfg.precision, host.device)
    try:
        return run_loop(cfg, job, run_dir, reporter, host.device, autocast=lambda: host.autocast(precision))
    finally:
        if cfg.gradient_checkpointing:
            host.set_gradient_checkpointing(False)
