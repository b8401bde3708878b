"""A/B previews of a library item: the same prompt and seed without it and with it (networks at strengths 0.5 and
1, an aesthetic embedding at its weight), or, for a checkpoint, on the loaded model and on that checkpoint; rendered
by the host's own sampler once and kept in a cache folder keyed by the file's sha256, the model and the settings; a
second look reads the PNG files back."""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager

from PIL import Image

from ..files import atomic_path
from .catalogue import Item, file_sha256

PREVIEWED = ("embedding", "hypernetwork", "lora", "lycoris", "aesthetic-embedding", "checkpoint")
NETWORK_STRENGTHS = (0.5, 1.0)
#: opens a checkpoint for its preview: path -> a context manager giving a host to sample with
CheckpointOpener = Callable[[Path], ContextManager]


@dataclass(frozen=True)
class PreviewSettings:
    prompt: str = "a picture"
    negative: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    size: int = 0  # 0 = the model's native size
    # an aesthetic embedding's preview (they key its pictures only)
    aesthetic_weight: float = 0.2
    aesthetic_steps: int = 5
    aesthetic_lr: float = 1e-4

    def common(self) -> dict:
        """What every item's pictures depend on."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("aesthetic_")}

    def aesthetic(self):
        from ..aesthetic.gradient import AestheticSettings

        return AestheticSettings(self.aesthetic_weight, self.aesthetic_steps, self.aesthetic_lr)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prompt_with(item: Item, prompt: str) -> str:
    """An embedding is used by its name (the WebUI's: the file stem) at the end of the prompt."""
    return f"{prompt}, {item.name}" if prompt else item.name


@contextlib.contextmanager
def applied(item: Item, host, strength):
    """``item`` in effect on ``host`` for the block (``strength``: a network's, or an aesthetic embedding's
    settings); the extra ``host.sample`` arguments (``embeddings`` …)."""
    if item.kind == "embedding":
        from ..textual_inversion.format import check_fits, load_embedding

        emb = load_embedding(item.path, name=item.name)
        check_fits(emb, host.widths)
        yield {"embeddings": {item.name: emb.for_encoders(list(host.widths))}}
    elif item.kind == "hypernetwork":
        from ..hypernetwork.apply import apply_hypernetwork, remove_hypernetwork

        hn = apply_hypernetwork(host, item.path, strength)
        try:
            yield {}
        finally:
            remove_hypernetwork(host, hn.name)
    elif item.kind == "aesthetic-embedding":
        from ..aesthetic.use import sampling_keywords

        yield sampling_keywords(host, item.path, strength)
    else:
        from ..lora.adapters import load_lora

        lora = load_lora(item.path, host.lora_targets(), host.family.name).to(host.device).attach(strength)
        try:
            yield {}
        finally:
            lora.detach()


def _render(host, settings: PreviewSettings, prompt: str, extra: dict) -> Image.Image:
    size = settings.size or None
    return host.sample([prompt], negative=settings.negative, steps=settings.steps, cfg_scale=settings.cfg_scale,
                       seed=settings.seed, width=size, height=size, **extra)[0]


def _cached(path: Path, make) -> tuple[Path, bool]:
    if path.is_file():
        return path, True
    image = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path, False


def previews(item: Item, host, settings: PreviewSettings, cache_dir: str | Path,
             open_checkpoint: CheckpointOpener | None = None) -> tuple[dict[str, Path], int]:
    """``item``'s previews (label → PNG path: "without", then "with" / "with 0.5" and "with 1" / "with weight W";
    a checkpoint's: "loaded model", "this checkpoint") and how many were rendered now (0: all from the cache). A
    checkpoint is rendered on the host ``open_checkpoint(path)`` gives (None: no checkpoint previews). Raises
    ValueError for a kind without previews or a file that does not fit."""
    if item.kind not in PREVIEWED:
        raise ValueError(f"{item.name}: a {item.kind} has no A/B preview ({item.why or 'not a model file'})")
    if item.kind == "checkpoint" and open_checkpoint is None:
        raise ValueError(f"{item.name}: a checkpoint's preview loads it; ask for checkpoint previews")
    if item.fit is False:
        raise ValueError(f"{item.name} does not fit this model: {item.why}")
    cache = Path(cache_dir).expanduser()
    common = (host.model_hash, settings.common())
    rendered = 0
    out: dict[str, Path] = {}
    path, hit = _cached(cache / "without" / f"{_key(*common)}.png", lambda: _render(host, settings, settings.prompt, {}))
    out["loaded model" if item.kind == "checkpoint" else "without"], rendered = path, rendered + (not hit)
    sha = file_sha256(item.path, cache)
    if item.kind == "checkpoint":
        def make():
            with open_checkpoint(item.path) as other:
                return _render(other, settings, settings.prompt, {})

        key = _key(settings.common(), "checkpoint", type(host).__name__)  # not the loaded model's: only the sampler's
        path, hit = _cached(cache / sha[:24] / f"{key}.png", make)
        out["this checkpoint"], rendered = path, rendered + (not hit)
        item.previews = out
        return out, rendered
    if item.kind == "embedding":
        variants = [("with", 1.0)]
    elif item.kind == "aesthetic-embedding":
        variants = [(f"with weight {settings.aesthetic_weight:g}", settings.aesthetic())]
    else:
        variants = [(f"with {s:g}", s) for s in NETWORK_STRENGTHS]
    prompt = prompt_with(item, settings.prompt) if item.kind == "embedding" else settings.prompt
    for label, strength in variants:
        def make(strength=strength):
            with applied(item, host, strength) as extra:
                return _render(host, settings, prompt, extra)

        key = asdict(strength) if item.kind == "aesthetic-embedding" else strength
        path, hit = _cached(cache / sha[:24] / f"{_key(*common, item.kind, key, prompt)}.png", make)
        out[label], rendered = path, rendered + (not hit)
    item.previews = out
    return out, rendered


@contextlib.contextmanager
def standalone_checkpoint(path: Path, device):
    """A checkpoint loaded beside the model for its preview (the CLI's and the page's), freed afterwards."""
    from ..host.standalone import load_host

    host = load_host(str(path), device)
    try:
        yield host
    finally:
        del host
