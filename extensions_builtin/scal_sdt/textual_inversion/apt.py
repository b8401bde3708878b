"""APT: DreamArtist-style contrastive prompt tuning. A positive embedding NAME and a negative one NAME-neg learn
together: each step runs the UNet on the doubled batch (the template with NAME-neg, and with NAME), applies
classifier-free guidance inside training, ``e_neg + s(t)·(e_pos − e_neg)``, and takes the loss on that — plus,
optionally, a reconstruction loss (the predicted x0 decoded by the VAE, L1 against the image) and a discriminator's
score of the decoded image."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from ..host.base import Conditioning
from ..training.templates import render
from .config import cfg_range
from .create import file_vectors
from .format import Embedding, save_embedding
from .trainer import EmbeddingJob


def neg_name(name: str) -> str:
    return f"{name}-neg"


def cfg_scales(t: torch.Tensor, num_steps: int, lo: float, hi: float, schedule: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The CFG scale of each batch item: over t/T (linear, cos, cos2: lo at t=0, hi at t=T) or, with no schedule,
    drawn uniformly from [lo, hi] (``generator`` on the CPU, so a run is the same on every device)."""
    u = t.float() / max(num_steps - 1, 1)
    if schedule == "linear":
        f = u
    elif schedule == "cos":
        f = (1 - torch.cos(math.pi * u)) / 2
    elif schedule == "cos2":
        f = ((1 - torch.cos(math.pi * u)) / 2) ** 2
    else:
        f = torch.rand(t.shape, generator=generator).to(t.device) if hi > lo else torch.zeros_like(u)
    return lo + (hi - lo) * f


def guided(e_neg: torch.Tensor, e_pos: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: e_neg + s·(e_pos − e_neg), ``scale`` per batch item."""
    return e_neg + scale.view(-1, *([1] * (e_pos.dim() - 1))).to(e_pos.dtype) * (e_pos - e_neg)


def crop_and_scale(pred: torch.Tensor, true: torch.Tensor, crop: int, down: int, generator: torch.Generator):
    """The same random ``crop`` x ``crop`` window of both latents (0 = all), then downscaled ``down`` times."""
    h, w = pred.shape[-2:]
    if crop and crop < min(h, w):
        top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
        pred, true = (x[..., top:top + crop, left:left + crop] for x in (pred, true))
    if down > 1:
        pred, true = (F.avg_pool2d(x, down) for x in (pred, true))
    return pred, true


@dataclass
class AptJob(EmbeddingJob):
    neg_vectors: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    discriminator: torch.nn.Module | None = None

    def __post_init__(self):
        super().__post_init__()
        self.neg = neg_name(self.name)
        self.lo, self.hi = cfg_range(self.cfg.cfg_scale)
        self.aux = torch.Generator("cpu").manual_seed(self.cfg.seed + 1)  # CFG draws and crops

    def _all(self) -> dict[str, torch.Tensor]:
        return {**{f"pos.{k}": v for k, v in self.vectors.items()}, **{f"neg.{k}": v for k, v in self.neg_vectors.items()}}

    def param_groups(self):
        from ..training.lr import rate_scale

        return [{"params": list(self.vectors.values())},
                {"params": list(self.neg_vectors.values()),
                 "lr_scale": rate_scale(self.cfg.neg_lr, self.cfg.lr, self.cfg.steps)}] + self.unet_groups()

    def embeddings(self) -> dict[str, dict[str, torch.Tensor]]:
        return {self.name: dict(self.vectors), self.neg: dict(self.neg_vectors)}

    def prompt_pairs(self, captions: list[str]) -> tuple[list[str], list[str]]:
        """The positive prompts (a template line with NAME) and the negative ones: NAME-neg alone, as it is used in
        the negative prompt (``neg_prompt name``), or the same line with NAME-neg (``mirror``)."""
        pos, neg = [], []
        for caption in captions:
            words = self.caption_words(caption)
            line = self.prompt_rng.choice(self.templates)
            pos.append(render(line, self.name, words))
            neg.append(render(line, self.neg, words) if self.cfg.neg_prompt == "mirror" else self.neg)
        return pos, neg

    def guided_prediction(self, x_t, t, cond_neg: Conditioning, cond_pos: Conditioning, scale) -> torch.Tensor:
        """One UNet call on the doubled batch, CFG applied."""
        out = self.host.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), Conditioning.cat([cond_neg, cond_pos]))
        e_neg, e_pos = out.chunk(2)
        return guided(e_neg, e_pos, scale)

    def loss(self) -> torch.Tensor:
        cfg, host = self.cfg, self.host
        nb = self.noised_batch()
        pos, neg = self.prompt_pairs(nb.batch.captions)
        scale = cfg_scales(nb.t, host.schedule.num_steps, self.lo, self.hi, cfg.cfg_schedule, self.aux)
        with host.on_device("text", "unet"):
            cond = host.encode_prompts(neg + pos, self.embeddings(), size=nb.size)
            cond_neg, cond_pos = cond.split(len(pos))
            pred = self.guided_prediction(nb.x_t, nb.t, cond_neg, cond_pos, scale)
        loss = self.objective(nb, pred) if cfg.disc_mode != "replace" else pred.sum() * 0.0
        if cfg.rec_weight or self.discriminator is not None:
            x0_pred, _ = self.objective.schedule.split(nb.x_t, pred, nb.t)
            x0_pred, x0_true = crop_and_scale(x0_pred.float(), nb.x0, cfg.rec_crop, cfg.rec_downscale, self.aux)
            with host.on_device("vae"):
                image = host.decode_differentiable(x0_pred)
                if cfg.rec_weight:
                    with torch.no_grad():
                        target = host.decode(x0_true)
                    loss = loss + cfg.rec_weight * F.l1_loss(image, target)
            if self.discriminator is not None:
                loss = loss - cfg.disc_weight * self.discriminator(image).mean()
        return loss

    def saved_vectors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both embeddings as they are now (the loop's moving average, with ema_decay, while it saves or previews)."""
        src = {k: v.detach() for k, v in self._all().items()}
        pos = {k[4:]: v.float().cpu().clone() for k, v in src.items() if k.startswith("pos.")}
        neg = {k[4:]: v.float().cpu().clone() for k, v in src.items() if k.startswith("neg.")}
        return pos, neg

    def save(self, step: int, final: bool):
        from pathlib import Path

        from .create import embedding_path

        pos, neg = self.saved_vectors()
        self.save_unet(step, final)
        paths = []
        for name, vectors in ((self.name, pos), (self.neg, neg)):
            emb = Embedding(name=name, vectors=file_vectors(self.host, vectors), step=step,
                            sd_checkpoint=self.host.model_hash, sd_checkpoint_name=self.host.model_name,
                            meta=self.embedding(step).meta)
            path = (embedding_path(Path(self.cfg.out), name, self.cfg.format) if final
                    else self.run_dir / "embeddings" / f"{name}-{step}.{self.cfg.format}")
            paths.append(save_embedding(emb, path, self.cfg.format))
        return paths[0]

    def preview(self, step: int):
        """The preview prompts with NAME and NAME-neg as the negative prompt (how the pair is used)."""
        pos, neg = self.saved_vectors()
        emb = {self.name: pos, self.neg: neg}
        negative = (self.cfg.preview_negative + ", " if self.cfg.preview_negative else "") + self.neg
        return self.preview_grid(step, lambda prompts, **kw: self.host.sample(
            prompts, embeddings=emb, **{**kw, "negative": negative}))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["aux"] = self.aux.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.aux.set_state(state["aux"])
