"""Aesthetic gradients at generation time (Gallego 2022, as the aesthetic-gradients extension does it): a few Adam
steps of the text encoder towards the aesthetic embedding (maximising the cosine between the prompt's projected
pooled text embedding and it), the prompt re-encoded with the tuned encoder, and the result blended with the plain
conditioning by ``weight``.

Unlike the extension, nothing is deep-copied: only the text towers' own weights are tuned, in place and in their own
dtype, and put back bit for bit afterwards (a CPU copy of them is the only extra memory besides Adam's two moments),
and the tuned conditioning is cached per (prompts, embedding, settings), so seeds and batch items reuse it. SDXL tunes
both towers, each towards its own row of the embedding. The host (standalone or the WebUI) supplies the towers and the
encoding; this module knows neither."""
from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import astuple, dataclass
from typing import Callable, Iterator

import torch

from ..host.base import Conditioning

#: the aesthetic-gradients extension's infotext keys (so its images and ours paste into each other's fields)
INFOTEXT_KEYS = {"lr": "Aesthetic LR", "weight": "Aesthetic weight", "steps": "Aesthetic steps",
                 "embedding": "Aesthetic embedding", "slerp": "Aesthetic slerp", "text": "Aesthetic text",
                 "text_negative": "Aesthetic text negative", "slerp_angle": "Aesthetic slerp angle",
                 "batchwise": "Aesthetic batch-wise"}


@dataclass(frozen=True)
class AestheticSettings:
    weight: float = 0.2  # under ~0.25 improves the look without changing the content (the guide this grew from)
    steps: int = 5
    lr: float = 1e-4
    slerp: bool = False  # move the target from the aesthetic embedding towards the prompt's own embedding
    slerp_angle: float = 0.1
    text: str = ""  # an aesthetic text, blended into the target with its own slerp
    text_negative: bool = False  # ... subtracted instead: "not this"
    batchwise: bool = True  # one tuning for all prompts of a batch; off: each distinct prompt tuned on its own

    @property
    def active(self) -> bool:
        return self.weight != 0 and self.steps != 0 and self.lr != 0

    def infotext(self, embedding: str) -> dict[str, object]:
        values = {"lr": f"{self.lr:g}", "weight": f"{self.weight:g}", "steps": self.steps, "embedding": embedding,
                  "slerp": self.slerp, "text": self.text, "text_negative": self.text_negative,
                  "slerp_angle": f"{self.slerp_angle:g}", "batchwise": self.batchwise}
        return {INFOTEXT_KEYS[k]: v for k, v in values.items()}


@dataclass
class Tower:
    """One text tower to tune: its row name in aesthetic files, its module (whose parameters are tuned) and
    ``project(texts)``, the texts' pooled text embeddings in CLIP's image-embedding space (differentiable)."""

    key: str  # 'clip_l' | 'clip_h' | 'clip_g'
    module: torch.nn.Module
    project: Callable[[list[str]], torch.Tensor]


def hf_tower(key: str, text_encoder: torch.nn.Module, token_ids: Callable, projection: torch.Tensor | None) -> Tower:
    """A transformers CLIPTextModel (its pooled output times ``projection``, [width, dim] as open_clip stores it) or
    CLIPTextModelWithProjection (its own text_embeds; ``projection`` None)."""

    def project(texts):
        dev = next(text_encoder.parameters()).device
        out = text_encoder(input_ids=token_ids(texts).to(dev))
        if projection is None:
            return out.text_embeds.float()
        return out.pooler_output.float() @ projection.to(dev, torch.float32)

    return Tower(key, text_encoder, project)


def open_clip_tower(key: str, model: torch.nn.Module, tokenize: Callable) -> Tower:
    """An open_clip text tower (``encode_text`` projects with its own text_projection)."""

    def project(texts):
        dev = next(model.parameters()).device
        return model.encode_text(tokenize(texts).to(dev)).float()

    return Tower(key, model, project)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors ``a`` and ``b`` (rows)."""
    a, b = unit(a), unit(b)
    omega = torch.acos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return torch.sin((1.0 - t) * omega) / so * a + torch.sin(t * omega) / so * b


class CompactAdam:
    """Adam (torch's defaults) for a few steps on weights in any dtype. Half-precision weights keep their moments in
    bf16 (fp16 moments underflow to zero and the step divides by zero) and receive gradients multiplied by
    ``loss_scale`` (fp16 gradients of a cosine loss underflow otherwise); each update is computed in fp32, one tensor
    at a time, so the only lasting extra memory is the two moments in the weights' size."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.half = any(p.dtype in (torch.float16, torch.bfloat16) for p in params)
        self.loss_scale = 1024.0 if any(p.dtype == torch.float16 for p in params) else 1.0
        self.moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.t = 0
        self.skipped = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> bool:
        """One update; False (and nothing changed) when a gradient is not finite."""
        grads = [None if p.grad is None else p.grad.float() / self.loss_scale for p in self.params]
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            self.skipped += 1
            return False
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g in zip(self.params, grads):
            if g is None:
                continue
            m, v = self.moments.get(id(p), (None, None))
            if m is None:
                dt = torch.bfloat16 if self.half else p.dtype
                m, v = torch.zeros_like(p, dtype=dt), torch.zeros_like(p, dtype=dt)
                self.moments[id(p)] = (m, v)
            m32 = m.float().mul_(b1).add_(g, alpha=1 - b1)
            v32 = v.float().mul_(b2).addcmul_(g, g, value=1 - b2)
            m.copy_(m32)
            v.copy_(v32)
            update = (m32 / c1) / ((v32 / c2).sqrt_().add_(self.eps))
            p.copy_(p.float().sub_(update, alpha=self.lr))
        return True


def target_of(tower: Tower, prompts: list[str], row: torch.Tensor, s: AestheticSettings) -> torch.Tensor:
    """Where the tower's projected prompts are pulled: the aesthetic embedding, slerped towards the prompt itself
    and/or towards (or away from) the aesthetic text when asked."""
    with torch.no_grad():
        own = tower.project(prompts)
        target = row.to(own.device, torch.float32).expand(len(prompts), -1)
        if s.slerp:
            target = slerp(target, own, s.slerp_angle)
        if s.text:
            text = tower.project([s.text]).expand(len(prompts), -1)
            target = slerp(target, -text if s.text_negative else text, s.slerp_angle)
    return unit(target)


def mean_cosine(towers: list[Tower], prompts: list[str], targets: list[torch.Tensor]) -> torch.Tensor:
    return sum((unit(t.project(prompts)) * target).sum(-1).mean() for t, target in zip(towers, targets)) / len(towers)


@contextlib.contextmanager
def tuned(towers: list[Tower], prompts: list[str], rows: dict[str, torch.Tensor], s: AestheticSettings,
          autocast=contextlib.nullcontext) -> Iterator[tuple[float, float]]:
    """Inside, the towers' weights are tuned towards ``rows`` (one per tower key) for ``prompts``; on leaving, put
    back bit for bit. Yields (mean cosine before, after) — the tuned towers' distance to the target. Works inside
    ``torch.inference_mode`` too (reForge computes conditioning there): the tuning leaves it for its own steps."""
    params = [p for t in towers for p in t.module.parameters()]
    saved = [p.detach().to("cpu", copy=True) for p in params]
    flags = [p.requires_grad for p in params]
    try:
        with torch.inference_mode(False), torch.enable_grad(), autocast():
            targets = [target_of(t, prompts, rows[t.key], s) for t in towers]
            for p in params:
                p.requires_grad_(True)
            opt = CompactAdam(params, s.lr)
            first = None
            for _ in range(s.steps):
                opt.zero_grad()
                cosine = mean_cosine(towers, prompts, targets)
                first = float(cosine.detach()) if first is None else first
                (-cosine * opt.loss_scale).backward()
                opt.step()
            opt.zero_grad()
            with torch.no_grad():
                last = float(mean_cosine(towers, prompts, targets))
        yield first, last
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for p, v, f in zip(params, saved, flags):
                p.copy_(v.to(p.device, p.dtype))
                p.requires_grad_(f)
                p.grad = None


def blend(plain, tuned_, w: float):
    """``plain * (1 - w) + tuned * w`` through any conditioning structure (tensors, dicts, lists, named tuples,
    plain objects such as the WebUI's MulticondLearnedConditioning); everything that is not a floating tensor must be
    equal in both and is kept."""
    if torch.is_tensor(plain):
        return plain * (1 - w) + tuned_.to(plain.dtype) * w if plain.is_floating_point() else plain
    if isinstance(plain, dict):
        return {k: blend(v, tuned_[k], w) for k, v in plain.items()}
    if isinstance(plain, tuple) and hasattr(plain, "_fields"):
        return type(plain)(*(blend(a, b, w) for a, b in zip(plain, tuned_)))
    if isinstance(plain, (list, tuple)):
        if len(plain) != len(tuned_):
            raise ValueError("the tuned conditioning has another structure than the plain one")
        return type(plain)(blend(a, b, w) for a, b in zip(plain, tuned_))
    if hasattr(plain, "__dict__") and not isinstance(plain, type):
        out = copy.copy(plain)
        for k, v in vars(plain).items():
            setattr(out, k, blend(v, getattr(tuned_, k), w))
        return out
    return plain


def embedding_digest(rows: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for k in sorted(rows):
        h.update(k.encode() + rows[k].float().cpu().numpy().tobytes())
    return h.hexdigest()


class TunedCache:
    """The blended conditioning per key, the newest ``size`` kept; ``hits`` counts reuses. Keys are compared with
    ``==`` (the WebUI's cache parameters hold lists), newest first."""

    def __init__(self, size: int = 16):
        self.size, self.items, self.hits = size, [], 0

    def get(self, key):
        for i, (k, value) in enumerate(self.items):
            if k == key:
                self.hits += 1
                self.items.insert(0, self.items.pop(i))
                return value
        return None

    def put(self, key, value):
        self.items.insert(0, (key, value))
        del self.items[self.size:]
        return value


def groups(prompts: list[str], batchwise: bool) -> list[list[int]]:
    """Indices tuned together: all at once (batch-wise), or one group per distinct prompt."""
    if batchwise:
        return [list(range(len(prompts)))]
    order: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        order.setdefault(p, []).append(i)
    return list(order.values())


class AestheticGradient:
    """Aesthetic gradients on a host from ``scal_sdt.host`` (the standalone one, or the WebUI through the model
    view): its text towers tuned in place, its ``encode_prompts`` for the conditioning."""

    def __init__(self, host, towers: list[Tower]):
        self.host, self.towers = host, towers
        self.cache = TunedCache()
        self.last_cosines: tuple[float, float] | None = None  # prompt·target before and after the last tuning

    @property
    def hits(self) -> int:
        return self.cache.hits

    def conditioning(self, prompts: list[str], rows: dict[str, torch.Tensor], s: AestheticSettings,
                     size: tuple[int, int] = (512, 512), negative: str | None = None,
                     embeddings: dict | None = None) -> Conditioning:
        """The host's conditioning of ``prompts`` (and, with ``negative``, of the negative prompt after them, in one
        batch as a sampler wants it), the prompts' rows nudged towards ``rows``; when not active exactly the host's.
        ``embeddings``: textual-inversion vectors by name, as for ``encode_prompts``."""
        n = len(prompts)
        texts = list(prompts) + ([negative] * n if negative is not None else [])
        with torch.no_grad():
            plain = self.host.encode_prompts(texts, embeddings, size=size)
        if not s.active:
            return plain
        key = (tuple(texts), tuple(sorted(embeddings or {})), embedding_digest(rows), astuple(s), size)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        context, pooled = plain.context.clone(), None if plain.pooled is None else plain.pooled.clone()
        with self.host.on_device("text"):
            for idx in groups(list(prompts), s.batchwise):
                with tuned(self.towers, [prompts[i] for i in idx], rows, s) as self.last_cosines:
                    with torch.no_grad():
                        t = self.host.encode_prompts([prompts[i] for i in idx], embeddings, size=size)
                context[idx] = blend(plain.context[idx], t.context, s.weight)
                if pooled is not None:
                    pooled[idx] = blend(plain.pooled[idx], t.pooled, s.weight)
        return self.cache.put(key, Conditioning(context, pooled, plain.time_ids))  # negatives stay the host's

    def cosine(self, prompts: list[str], rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """The towers' mean cosine of each prompt to its row of the embedding."""
        total = 0
        with torch.no_grad():
            for t in self.towers:
                projected = unit(t.project(prompts))
                total = total + projected @ unit(rows[t.key]).to(projected.device, torch.float32).T
        return total / len(self.towers)
