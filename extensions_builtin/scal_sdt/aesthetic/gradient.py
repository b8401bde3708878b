"""Aesthetic gradients at generation time (Gallego 2022, as the aesthetic-gradients extension does it): a few Adam
steps of the text encoder towards the aesthetic embedding (maximising the cosine between the prompt's projected
pooled text embedding and it), the prompt re-encoded with the tuned encoder, and the result blended with the plain
conditioning by ``weight``.

Unlike the extension, nothing is deep-copied: only the text tower's own weights are tuned, in place, and put back
bit for bit afterwards (a CPU copy of them is the only extra memory besides Adam's state), and the tuned conditioning
is cached per (prompts, embedding, settings), so seeds and batch items reuse it."""
from __future__ import annotations

import hashlib
from dataclasses import astuple, dataclass

import torch

from ..host.base import Conditioning


@dataclass(frozen=True)
class AestheticSettings:
    weight: float = 0.2  # under ~0.25 improves the look without changing the content (the guide this grew from)
    steps: int = 5
    lr: float = 1e-4
    slerp: bool = False  # move the target from the aesthetic embedding towards the prompt's own embedding
    slerp_angle: float = 0.1
    text: str = ""  # an aesthetic text, blended into the target with its own slerp
    text_negative: bool = False  # ... subtracted instead: "not this"


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors ``a`` and ``b`` (rows)."""
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return torch.sin((1.0 - t) * omega) / so * a + torch.sin(t * omega) / so * b


class AestheticGradient:
    """For one text encoder (an HF ``CLIPTextModel`` that the host encodes with) and the projection of its CLIP into
    the image-embedding space; ``token_ids(texts)`` gives its [B, 77] ids. (SDXL's second encoder: next step.)"""

    def __init__(self, host, text_encoder: torch.nn.Module, projection: torch.Tensor, token_ids):
        self.host, self.text_encoder, self.token_ids = host, text_encoder, token_ids
        self.projection = projection.detach()
        self.cache: dict[tuple, Conditioning] = {}
        self.hits = 0
        self.last_cosines: tuple[float, float] | None = None  # prompt·target before and after the last tuning

    def projected(self, texts: list[str]) -> torch.Tensor:
        dev = next(self.text_encoder.parameters()).device
        pooled = self.text_encoder(input_ids=self.token_ids(texts).to(dev)).pooler_output
        out = pooled.float() @ self.projection.to(dev, torch.float32)
        return out / out.norm(dim=-1, keepdim=True)

    def target(self, prompts: list[str], embedding: torch.Tensor, s: AestheticSettings) -> torch.Tensor:
        dev = next(self.text_encoder.parameters()).device
        target = embedding.to(dev, torch.float32).expand(len(prompts), -1)
        with torch.no_grad():
            if s.slerp:
                target = slerp(target, self.projected(prompts), s.slerp_angle)
            if s.text:
                text = self.projected([s.text]).expand(len(prompts), -1)
                target = slerp(target, -text if s.text_negative else text, s.slerp_angle)
        return target / target.norm(dim=-1, keepdim=True)

    def conditioning(self, prompts: list[str], embedding: torch.Tensor, s: AestheticSettings,
                     size: tuple[int, int] = (512, 512), negative: str | None = None,
                     embeddings: dict | None = None) -> Conditioning:
        """The host's conditioning of ``prompts`` (and, with ``negative``, of the negative prompt after them, in one
        batch as a sampler wants it), the prompts' rows nudged towards ``embedding``; with weight 0 or no steps
        exactly the host's. ``embeddings``: textual-inversion vectors by name, as for ``encode_prompts``."""
        n = len(prompts)
        texts = list(prompts) + ([negative] * n if negative is not None else [])
        with torch.no_grad():
            plain = self.host.encode_prompts(texts, embeddings, size=size)
        if s.weight == 0 or s.steps == 0:
            return plain
        names = tuple(sorted(embeddings or {}))
        key = (tuple(texts), names, hashlib.sha1(embedding.float().cpu().numpy().tobytes()).hexdigest(), astuple(s),
               size)
        if key in self.cache:
            self.hits += 1
            return self.cache[key]
        params = [p for p in self.text_encoder.parameters()]
        saved = [p.detach().to("cpu", copy=True) for p in params]
        flags = [p.requires_grad for p in params]
        target = self.target(prompts, embedding, s)
        try:
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=s.lr)
            with torch.enable_grad():
                for step in range(s.steps):
                    opt.zero_grad(set_to_none=True)
                    loss = -(self.projected(prompts) * target).sum(-1).mean()
                    first = -float(loss) if step == 0 else first
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                tuned = self.host.encode_prompts(texts, embeddings, size=size)
                self.last_cosines = (first, float((self.projected(prompts) * target).sum(-1).mean()))
        finally:
            with torch.no_grad():
                for p, v, f in zip(params, saved, flags):
                    p.copy_(v.to(p.device, p.dtype))
                    p.requires_grad_(f)
                    p.grad = None
        w = torch.zeros(len(texts), 1, 1, device=plain.context.device)
        w[:n] = s.weight  # the negative prompt's rows stay the host's
        blend = Conditioning(plain.context * (1 - w) + tuned.context * w,
                             None if plain.pooled is None else plain.pooled * (1 - w[:, 0]) + tuned.pooled * w[:, 0],
                             plain.time_ids)
        self.cache[key] = blend
        return blend

    def cosine(self, prompts: list[str], embedding: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.projected(prompts) @ (embedding / embedding.norm(dim=-1, keepdim=True)).T.to(
                next(self.text_encoder.parameters()).device, torch.float32)
