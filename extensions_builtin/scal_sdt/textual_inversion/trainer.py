"""Train a Textual Inversion embedding: only the placeholder vectors learn; the model stays frozen."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import to_dict, turn_on
from ..host.base import Host
from ..lora_layers.network import LoraNetwork, unet_targets
from ..training.dataset import LatentDataset
from ..training.frozen_job import FrozenModelJob
from ..training.loop import LoopResult, run_on_host
from ..training.report import ConsoleReporter, Reporter
from ..training.run_setup import prepare_data, run_dir_for
from ..training.templates import load_template
from ..training.validation import heldout_loss
from .config import EmbeddingConfig
from .create import file_vectors, embedding_path, existing_embeddings, init_vectors
from .format import Embedding, save_embedding


@dataclass
class EmbeddingJob(FrozenModelJob):
    """What Textual Inversion gives the loop: the vectors, the diffusion loss, how to save and preview."""

    cfg: EmbeddingConfig
    host: Host
    dataset: LatentDataset
    vectors: dict[str, torch.nn.Parameter]
    templates: list[str]
    run_dir: Path
    validation: LatentDataset | None = None
    unet_lora: LoraNetwork | None = None  # selected UNet parts learning along (attached to the host's UNet)

    def __post_init__(self):
        self.start_generators()

    def param_groups(self):
        return [{"params": list(self.vectors.values())}] + self.unet_groups()

    def unet_groups(self) -> list[dict]:
        if self.unet_lora is None:
            return []
        from ..training.lr import rate_scale

        return [{"params": list(self.unet_lora.parameters()),
                 "lr_scale": rate_scale(self.cfg.unet_lr, self.cfg.lr, self.cfg.steps)}]

    def save_unet(self, step: int, final: bool) -> Path | None:
        """The UNet parts as a kohya LoRA: ``lora_out/NAME-unet.safetensors`` (run checkpoints in the run folder)."""
        if self.unet_lora is None:
            return None
        name = f"{self.name}-unet"
        path = (Path(self.cfg.lora_out) / f"{name}.safetensors" if final
                else self.run_dir / "lora" / f"{name}-{step}.safetensors")
        meta = {"scal_sdt": json.dumps(to_dict(self.cfg)), "ss_steps": str(step)}
        return self.unet_lora.save(path, self.host.family.name, name, meta)

    def loss(self) -> torch.Tensor:
        nb = self.noised_batch()
        with self.host.on_device("text", "unet"):  # the text encoder stays on the device for the backward pass
            cond = self.host.encode_prompts(self.prompts_for(nb.batch.captions), {self.name: dict(self.vectors)},
                                            size=nb.size)
            out = self.host.predict(nb.x_t, nb.t, cond)
        return self.objective(nb, out)

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
        self.save_unet(step, final)
        return save_embedding(self.embedding(step), path, self.cfg.format)

    def preview(self, step: int):
        """A fixed-seed grid of the preview prompts, rendered by the host's own sampler with the current vectors."""
        vectors = {k: v.detach() for k, v in self.vectors.items()}
        return self.preview_grid(step, lambda prompts, **kw: self.host.sample(prompts, embeddings={self.name: vectors},
                                                                              **kw))

    def validation_loss(self) -> float | None:
        """Held-out images with their first-template prompts, at fixed timesteps and noises."""
        return self.validation_mean(lambda latents, prompts, masks: heldout_loss(
            self.host, latents, prompts, {self.name: dict(self.vectors)}, seed=self.cfg.seed, objective=self.objective,
            masks=masks))


def templates_with_name(template: str, reporter: Reporter, captions: list[str] = ()) -> list[str]:
    """The template's lines that mention [name] (or [filewords], when every caption writes ``[name]`` itself, which
    the WebUI also fills in); an embedding only learns from prompts that contain it."""
    lines = load_template(template)
    names_in_captions = bool(captions) and all("[name]" in c for c in captions)
    usable = [line for line in lines if "[name]" in line or (names_in_captions and "[filewords]" in line)]
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
    names = [cfg.name] + ([f"{cfg.name}-neg"] if cfg.mode == "apt" else [])
    for name in names:
        if not cfg.resume and not cfg.overwrite and (clash := existing_embeddings(out_dir, name)):
            raise FileExistsError(f"embedding {name!r} already exists ({clash[0]}); choose another name, "
                                  f"{turn_on('overwrite')} to replace it, or {turn_on('resume')} to continue its run")
    resolution = cfg.resolution or host.native_resolution
    dataset, validation = prepare_data(cfg, host, reporter, resolution)
    start = init_vectors(host, cfg.init_text, cfg.vectors)
    vectors = {k: torch.nn.Parameter(v.to(host.device, torch.float32)) for k, v in start.items()}
    unet_lora = None
    if cfg.unet_parts:
        unet_lora = LoraNetwork(unet_targets(host.unet_modules(), cfg.unet_parts), rank=cfg.unet_rank)
        unet_lora.to(host.device).attach()
        reporter.message(f"UNet parts {cfg.unet_parts}: a rank-{cfg.unet_rank} LoRA on {len(unet_lora.layers)} layers "
                         f"({sum(p.numel() for p in unet_lora.parameters()):,} weights) at lr {cfg.unet_lr:g}, saved "
                         f"as {Path(cfg.lora_out) / (cfg.name + '-unet.safetensors')}")
    templates = templates_with_name(cfg.template, reporter, [item.caption for item in dataset.items])
    if cfg.mode == "apt":
        from .apt import AptJob
        from .discriminator import ClipScore

        neg = init_vectors(host, cfg.neg_init_text, cfg.neg_vectors)
        neg_vectors = {k: torch.nn.Parameter(v.to(host.device, torch.float32)) for k, v in neg.items()}
        disc = ClipScore.load(cfg.disc_clip, cfg.disc_head, host.device) if cfg.disc_clip else None
        job = AptJob(cfg, host, dataset, vectors, templates, run_dir, validation, unet_lora=unet_lora,
                     neg_vectors=neg_vectors, discriminator=disc)
        what = (f"APT pair {cfg.name!r} / {cfg.name}-neg ({cfg.vectors} / {cfg.neg_vectors} vectors, CFG "
                f"{cfg.cfg_scale} {cfg.cfg_schedule}" + (f", reconstruction x{cfg.rec_weight}" if cfg.rec_weight else "")
                + (f", discriminator x{cfg.disc_weight} ({cfg.disc_mode})" if disc else "") + ")")
    else:
        job = EmbeddingJob(cfg, host, dataset, vectors, templates, run_dir, validation, unet_lora=unet_lora)
        what = f"embedding {cfg.name!r} ({cfg.vectors} vector(s))"
    reporter.message(f"training {what}, widths {host.widths}, on {host.model_name} [{host.family.name}, "
                     f"{host.device}], {len(dataset.items)} images at {resolution}px")
    try:
        return run_on_host(cfg, job, run_dir, reporter, host)
    finally:
        if unet_lora is not None:
            unet_lora.detach()  # the host's UNet is as it was
