"""DreamBooth (Ruiz et al. 2022): the UNet (and optionally the text encoders) fine-tuned on a concept's images with
its instance prompt; prior preservation adds, in the same forward pass, the class images the model drew for the class
prompt, their loss weighted by ``prior_loss_weight``. Latents are cached and the VAE leaves the device; the result is
a single-file checkpoint in the original layout (with its yaml) that the WebUI, ComfyUI and diffusers load."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import mention, to_dict, turn_on
from ..files import atomic_write_text
from ..host.base import Host
from ..training.dataset import LatentDataset
from ..training.frozen_job import FrozenModelJob
from ..training.loop import LoopResult, resolve_precision, run_on_host
from ..training.lr import rate_scale
from ..training.report import ConsoleReporter, Reporter
from ..training.run_setup import prepare_data, run_dir_for
from ..textual_inversion.format import save_embedding
from ..training.templates import render
from .class_images import ensure_class_images
from .concepts import Concept, concepts_of, next_turn, turn_shares
from .config import DreamBoothConfig


@dataclass
class ConceptData:
    concept: Concept
    instances: LatentDataset
    classes: LatentDataset | None


@dataclass
class DreamBoothJob(FrozenModelJob):
    cfg: DreamBoothConfig
    host: Host
    concepts: list[ConceptData]
    run_dir: Path
    text_encoders: list[torch.nn.Module] = field(default_factory=list)  # trained along, until stop_text_encoder
    validation: LatentDataset | None = None
    before: dict | None = None  # the UNet's Linear and Conv2d weights before training, for extract_lora
    vectors: dict[str, torch.nn.Parameter] | None = None  # pivotal tuning: the new token's embedding

    def __post_init__(self):
        self.dataset = self.concepts[0].instances  # the preview's default caption comes from it
        self.templates = [self.concepts[0].concept.instance_prompt or "[filewords]"]
        self.start_generators()
        self.turn = 0
        given = any(c.concept.repeats is not None for c in self.concepts)  # else equal turns
        self.shares = turn_shares([sum(i.repeats for i in c.instances.items) * (c.concept.repeats or 1.0)
                                   for c in self.concepts] if given else None)
        self.taken = [0] * len(self.concepts)  # turns each concept has had
        self.steps_done = 0  # optimizer steps applied by this run
        self.text_cache: dict[str, object] = {}  # prompt -> Conditioning, while the text is frozen

    def cache_prompts(self, resolution: int) -> int:
        """Encode every prompt the run will use once (when they are fixed: text frozen, no tag shuffle or dropout,
        and for SDXL one size), then let the text encoders leave the device. Returns how many were cached."""
        if (self.training_text or self.vectors or self.cfg.shuffle_tags or self.cfg.tag_dropout
                or self.cfg.caption_dropout
                or (self.cfg.buckets and self.host.family.size_conditioning)):
            return 0
        wanted = {self.prompts(template, [item.caption])[0]
                  for data in self.concepts
                  for ds, template in ((data.instances, data.concept.instance_prompt),
                                       (data.classes, data.concept.class_prompt)) if ds is not None
                  for item in ds.items}
        with self.host.on_device("text"), torch.no_grad():
            for prompt in wanted:
                self.text_cache[prompt] = self.host.encode_prompts([prompt], size=(resolution, resolution))
        self.host.park("text")
        return len(wanted)

    def start(self, reporter: Reporter, title: str, learns: str, resolution: int) -> None:
        """The prompts cached where they can be, then the run's first line (DreamBooth's and LoRA's alike): what
        learns, how many weights, the pivotal embedding, size, rate and batch."""
        cfg, host = self.cfg, self.host
        if cfg.cache_text and (cached := self.cache_prompts(resolution)):
            reporter.message(f"{cached} prompt(s) encoded once; the text encoder(s) left the device")
        n_params = sum(p.numel() for g in self.param_groups() for p in g["params"])
        pivotal = f" + a {cfg.pivotal_vectors}-vector embedding {cfg.name!r}" if self.vectors else ""
        reporter.message(f"{title} on {host.model_name} [{host.family.name}, {host.device}]: {n_params:,} weights "
                         f"learn ({learns}{pivotal}), {resolution}px, lr {cfg.lr}, batch {cfg.batch_size} x "
                         f"{cfg.grad_accum}")

    def encode(self, prompts: list[str], size):
        from ..host.base import Conditioning

        if self.text_cache and all(p in self.text_cache for p in prompts):
            return Conditioning.cat([self.text_cache[p] for p in prompts])
        with self.host.on_device("text"), torch.set_grad_enabled(self.training_text or bool(self.vectors)):
            return self.host.encode_prompts(prompts, self.embeddings(), size=size)

    # -- what learns ------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        unet = [{"params": [p for p in self.host.trainable_modules()[0].parameters() if p.requires_grad]}]
        return unet + self.text_and_pivotal_groups()

    def text_and_pivotal_groups(self) -> list[dict]:
        """The text encoders' and the pivotal embedding's groups, each at its own rate (LoRA's too)."""
        groups = []
        if self.text_encoders:
            groups.append({"params": [p for te in self.text_encoders for p in te.parameters()],
                           "lr_scale": rate_scale(self.cfg.text_encoder_lr, self.cfg.lr, self.cfg.steps)})
        if self.vectors:
            groups.append({"params": list(self.vectors.values()),
                           "lr_scale": rate_scale(self.cfg.pivotal_lr, self.cfg.lr, self.cfg.steps)})
        return groups

    def embeddings(self) -> dict | None:
        return {self.name: dict(self.vectors)} if self.vectors else None

    @property
    def training_text(self) -> bool:
        return any(p.requires_grad for te in self.text_encoders for p in te.parameters())

    # -- the loss ---------------------------------------------------------------------------------------------
    def prompts(self, template: str, captions: list[str]) -> list[str]:
        return [render(template or "[filewords]", self.name, self.caption_words(c)) for c in captions]

    def loss(self) -> torch.Tensor:
        """The instance batch and (with prior preservation) as many class images, in one UNet call when their sizes
        agree: loss(instances) + prior_loss_weight · loss(classes), each by the run's objective, times the
        concept's weight."""
        data = self.concepts[self.take_turn()]
        parts = [(self.noised_batch(data.instances), data.concept.instance_prompt)]
        if data.classes is not None:
            parts.append((self.noised_batch(data.classes), data.concept.class_prompt))
        prompts = [self.prompts(template, nb.batch.captions) for nb, template in parts]
        host = self.host
        conds = [self.encode(p, nb.size) for (nb, _), p in zip(parts, prompts)]
        with host.on_device("unet"):
            if len(parts) == 2 and parts[0][0].x_t.shape[1:] == parts[1][0].x_t.shape[1:]:
                from ..host.base import Conditioning

                n = parts[0][0].x_t.shape[0]
                out = host.predict(torch.cat([nb.x_t for nb, _ in parts]), torch.cat([nb.t for nb, _ in parts]),
                                   Conditioning.cat(conds))
                outs = [out[:n], out[n:]]
            else:
                outs = [host.predict(nb.x_t, nb.t, c) for (nb, _), c in zip(parts, conds)]
        loss = self.objective(parts[0][0], outs[0])
        if len(parts) == 2:
            loss = loss + self.cfg.prior_loss_weight * self.objective(parts[1][0], outs[1])
        return loss if data.concept.weight == 1.0 else data.concept.weight * loss

    def take_turn(self) -> int:
        """The concept of this batch (see concepts.next_turn), counted."""
        i = next_turn(self.shares, self.taken, self.turn)
        self.taken[i] += 1
        self.turn += 1
        return i

    def after_step(self, step: int) -> None:
        self.steps_done += 1
        if self.text_encoders and self.training_text and step >= self.cfg.stop_text_encoder * self.cfg.steps:
            for te in self.text_encoders:
                te.requires_grad_(False)
                for p in te.parameters():
                    p.grad = None

    # -- results ----------------------------------------------------------------------------------------------
    def save(self, step: int, final: bool) -> Path:
        """The checkpoint (original layout, fp16 unless save_fp16 is off) with its yaml and the run's JSON."""
        path = (Path(self.cfg.out) / f"{self.name}.safetensors" if final
                else self.run_dir / "models" / f"{self.name}-{step}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.host.save_checkpoint(path, dtype=torch.float16 if self.cfg.save_fp16 else None)
        atomic_write_text(path.with_suffix(".json"), json.dumps({"trainer": "scal-sdt dreambooth", "step": step,
                                                                 "source": self.host.model_name,
                                                                 "config": to_dict(self.cfg)}, indent=1))
        bundle = {}
        if self.vectors:
            emb = self.embedding(step)
            target = (Path(self.cfg.embeddings_out) / f"{self.name}.safetensors" if final
                      else self.run_dir / "embeddings" / f"{self.name}-{step}.safetensors")
            save_embedding(emb, target)
            bundle = {f"bundle_emb.{self.name}." + ("string_to_param.*" if k == "*" else k): v
                      for k, v in emb.vectors.items()}  # how the WebUI finds embeddings inside a LoRA file
        if final and self.before is not None:
            from ..lora_layers.extract import extract_lora

            lora = Path(self.cfg.lora_out or self.cfg.out) / f"{self.name}-lora.safetensors"
            lora.parent.mkdir(parents=True, exist_ok=True)
            extract_lora(self.before, self.host.unet_modules(), self.cfg.extract_lora, self.host.family.name,
                         f"{self.name}-lora", lora, extra=bundle, conv_rank=self.cfg.extract_lora_conv)
        return path

    def embedding(self, step: int):
        from ..textual_inversion.create import file_vectors
        from ..textual_inversion.format import Embedding

        vectors = file_vectors(self.host, {k: v.detach().float().cpu().clone() for k, v in self.vectors.items()})
        return Embedding(name=self.name, vectors=vectors, step=step, sd_checkpoint=self.host.model_hash,
                         sd_checkpoint_name=self.host.model_name,
                         meta={"trainer": "scal-sdt dreambooth pivotal tuning", "scal_sdt": json.dumps(to_dict(self.cfg))})

    def preview(self, step: int):
        return self.preview_grid(step, lambda prompts, **kw: self.host.sample(prompts, embeddings=self.embeddings(),
                                                                              **kw))

    def state_dict(self) -> dict:
        return {"turn": self.turn, "noise": self.noise.get_state(), "prompt_rng": self.prompt_rng.getstate(),
                "data": [{"instances": c.instances.state_dict(),
                          "classes": c.classes.state_dict() if c.classes is not None else None}
                         for c in self.concepts],
                "text_encoders": self.training_text}

    def load_state_dict(self, state: dict) -> None:
        from ..training.state import as_tuple

        turns = int(state["turn"])
        self.turn, self.taken = 0, [0] * len(self.concepts)
        for _ in range(turns):  # the turns are a function of their count: replayed, not stored
            self.take_turn()
        self.noise.set_state(state["noise"])
        self.prompt_rng.setstate(as_tuple(state["prompt_rng"]))
        for c, s in zip(self.concepts, state["data"]):
            c.instances.load_state_dict(s["instances"])
            if c.classes is not None and s["classes"] is not None:
                c.classes.load_state_dict(s["classes"])
        if not state.get("text_encoders", True):
            for te in self.text_encoders:
                te.requires_grad_(False)


def prepare_concepts(cfg: DreamBoothConfig, host: Host, reporter: Reporter, resolution: int) -> list[ConceptData]:
    """Each concept's cached instance latents and, with prior preservation, its class images (generated where
    missing) and their latents."""
    from ..training import distributed

    processes = distributed.current()  # several training together: the first makes the class images, all use them
    out = []
    for i, concept in enumerate(concepts_of(cfg)):
        if concept.prior and processes.main:
            ensure_class_images(host.sample, concept.class_data, concept.class_prompt, concept.num_class_images,
                                resolution, cfg.class_steps, cfg.class_cfg, cfg.seed + 1000 * i, reporter)
        processes.barrier()
        instances, _ = prepare_data(dataclasses.replace(cfg, data=concept.instance_data), host, reporter, resolution,
                                    caption_ext=concept.caption_extension)
        classes = None
        if concept.prior:
            classes, _ = prepare_data(dataclasses.replace(cfg, data=concept.class_data, validation_images=0,
                                                          validation_data="", seed=cfg.seed + 1 + i, alpha_weight=False,
                                                          flip=False, random_crop=False, color_jitter=0.0,
                                                          folder_weights=""), host, reporter, resolution,
                                      caption_ext=concept.caption_extension)
        repeats = f" x {concept.repeats:g} repeats" if concept.repeats is not None else ""
        reporter.message(f"concept {i + 1}: {len(instances.items)} instance image(s){repeats}, prompt "
                         f"{concept.instance_prompt or '[filewords]'!r}" + (
                             f"; {len(classes.items)} class image(s), prompt {concept.class_prompt!r}, prior weight "
                             f"{cfg.prior_loss_weight:g}" if classes is not None else "; no prior preservation"))
        out.append(ConceptData(concept, instances, classes))
    return out


def refuse_existing(cfg: DreamBoothConfig, what: str) -> None:
    """Before any work: the result ``out/NAME.safetensors`` (a ``what``) or, with pivotal tuning, an embedding NAME
    already there is not replaced unless overwrite (or resume) says so."""
    if cfg.overwrite or cfg.resume:
        return
    target = Path(cfg.out) / f"{cfg.name}.safetensors"
    if target.exists():
        raise FileExistsError(f"{what} {target} already exists; choose another name or {turn_on('overwrite')}")
    if cfg.pivotal_vectors:
        from ..textual_inversion.create import existing_embeddings

        if clash := existing_embeddings(Path(cfg.embeddings_out), cfg.name):
            raise FileExistsError(f"embedding {cfg.name!r} already exists ({clash[0]}); choose another name or "
                                  f"{turn_on('overwrite')}")


def pivotal_vectors(cfg: DreamBoothConfig, host: Host) -> dict[str, torch.nn.Parameter] | None:
    """Pivotal tuning's new embedding, to learn along (``cfg.pivotal_vectors`` vectors per text encoder, started at
    ``cfg.pivotal_init_text``), fp32 on the device; None without pivotal tuning."""
    if not cfg.pivotal_vectors:
        return None
    from ..textual_inversion.create import init_vectors

    start = init_vectors(host, cfg.pivotal_init_text, cfg.pivotal_vectors)
    return {k: torch.nn.Parameter(v.to(host.device, torch.float32)) for k, v in start.items()}


def is_out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def step_down(cfg: DreamBoothConfig) -> tuple[DreamBoothConfig, str] | None:
    """The next smaller setting after an out-of-memory error: gradient checkpointing on, then half the batch (twice
    the accumulation, so the effective batch stays); None when nothing is left to give."""
    if not cfg.gradient_checkpointing:
        return dataclasses.replace(cfg, gradient_checkpointing=True), "gradient checkpointing on"
    if cfg.batch_size > 1:
        half = cfg.batch_size // 2
        return (dataclasses.replace(cfg, batch_size=half, grad_accum=cfg.grad_accum * cfg.batch_size // half),
                f"batch {half} x {cfg.grad_accum * cfg.batch_size // half} accumulated")
    return None


def preflight(cfg: DreamBoothConfig, host: Host, reporter: Reporter) -> None:
    """Say the estimated peak; with ``vram_gb`` given and exceeded, stop with the options that make it fit."""
    from .preflight import ModelSize, advise

    budget = cfg.vram_gb
    if not budget and host.device.type == "cuda":
        budget = torch.cuda.get_device_properties(host.device).total_memory / 2 ** 30
    resolution = cfg.resolution or host.native_resolution
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, host.device))  # a CPU's auto: fp32
    estimate, advice = advise(cfg, ModelSize.of(host), resolution, budget or float("inf"))
    fits = not budget or estimate.peak_mib <= budget * 1024
    reporter.message(estimate.describe() + ("" if fits else f"; more than {budget:g} GiB — to fit: " + "; ".join(advice)))
    if not fits and cfg.vram_gb:
        raise ValueError(f"DreamBooth {cfg.name!r} needs about {estimate.peak_mib / 1024:.1f} GiB, more than the "
                         f"{cfg.vram_gb:g} GiB given (vram_gb); switch on: " + "; ".join(advice))


def train_dreambooth(cfg: DreamBoothConfig, host: Host, reporter: Reporter | None = None) -> LoopResult:
    """Fine-tune ``host``'s model on the concepts; the host's weights are trained in place (the caller gives a host
    it owns, or keeps them with ``host.weights_kept``) and left as trained, in the dtype they had. Out of memory before
    the first step is applied, it steps down (:func:`step_down`) and starts again instead of failing."""
    reporter = reporter or ConsoleReporter()
    if cfg.master_weights == "bf16" and cfg.precision != "bf16":  # bf16 weights compute in bf16
        cfg = dataclasses.replace(cfg, precision="bf16")
    refuse_existing(cfg, "checkpoint")
    preflight(cfg, host, reporter)
    while True:
        box: dict = {}
        try:
            return _train(cfg, host, reporter, box)
        except Exception as e:
            job = box.pop("job", None)
            if not is_out_of_memory(e) or (job is not None and job.steps_done > 0):
                raise
            smaller = step_down(cfg)
            if smaller is None:
                raise RuntimeError(f"out of memory even with gradient checkpointing at batch 1: try "
                                   f"{mention('master_weights', 'bf16')}, {mention('optimizer', 'adafactor')} (or "
                                   f"adamw8bit), {mention('resolution')} lower than "
                                   f"{cfg.resolution or host.native_resolution}, or "
                                   f"{mention('memory_mode', 'medvram')}") from e
            cfg, what = smaller
            del job, box
            import gc

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            reporter.message(f"out of memory before the first step: trying again with {what}")


def _train(cfg: DreamBoothConfig, host: Host, reporter: Reporter, box: dict) -> LoopResult:
    """One attempt; ``box["job"]`` is the job, so the caller can tell whether a step was applied."""
    run_dir = run_dir_for(cfg)
    resolution = cfg.resolution or host.native_resolution
    concepts = prepare_concepts(cfg, host, reporter, resolution)
    trained = host.trainable_modules(cfg.train_text_encoder)
    # put back in the dtype they had: a WebUI's nominal dtype (reForge's dtype_unet) may not be its weights' own,
    # and casting to it and back would make two more copies of the model
    dtypes = [next(m.parameters()).dtype for m in trained]
    master = torch.bfloat16 if cfg.master_weights == "bf16" else torch.float32
    for module in trained:  # fp32 master weights (autocast runs the maths in fp16/bf16), or full bf16
        module.to(master).requires_grad_(True)
    before = None
    if cfg.extract_lora:
        from ..lora_layers.extract import layer_weights

        before = layer_weights(host.unet_modules())
    vectors = pivotal_vectors(cfg, host)
    job = box["job"] = DreamBoothJob(cfg, host, concepts, run_dir, trained[1:], before=before, vectors=vectors)
    job.start(reporter, f"DreamBooth {cfg.name!r}", "UNet" + (" + text encoders" if cfg.train_text_encoder else ""),
              resolution)
    try:
        return run_on_host(cfg, job, run_dir, reporter, host)
    finally:
        for module, dtype in zip(trained, dtypes):
            module.requires_grad_(False).to(dtype)
