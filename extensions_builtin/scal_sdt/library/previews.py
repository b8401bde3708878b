"""A/B previews of a library item: the same prompt and seed without it and with it (networks at strengths 0.5 and
1), rendered by the host's own sampler once and kept in a cache folder keyed by the file's sha256, the model and the
settings; a second look reads the PNG files back."""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ..files import atomic_path
from .catalogue import Item, file_sha256

PREVIEWED = ("embedding", "hypernetwork", "lora", "lycoris")
NETWORK_STRENGTHS = (0.5, 1.0)


@dataclass(frozen=True)
class PreviewSettings:
    prompt: str = "a picture"
    negative: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    size: int = 0  # 0 = the model's native size


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prompt_with(item: Item, prompt: str) -> str:
    """An embedding is used by its name (the WebUI's: the file stem) at the end of the prompt."""
    return f"{prompt}, {item.name}" if prompt else item.name


@contextlib.contextmanager
def applied(item: Item, host, strength: float):
    """``item`` in effect on ``host`` for the block; the embeddings dict to sample with."""
    if item.kind == "embedding":
        from ..textual_inversion.format import check_fits, load_embedding

        emb = load_embedding(item.path, name=item.name)
        check_fits(emb, host.widths)
        yield {item.name: emb.for_encoders(list(host.widths))}
    elif item.kind == "hypernetwork":
        from ..hypernetwork.apply import apply_hypernetwork, remove_hypernetwork

        hn = apply_hypernetwork(host, item.path, strength)
        try:
            yield {}
        finally:
            remove_hypernetwork(host, hn.name)
    else:
        from ..lora.adapters import load_lora

        lora = load_lora(item.path, host.lora_targets(), host.family.name).to(host.device).attach(strength)
        try:
            yield {}
        finally:
            lora.detach()


def _render(host, settings: PreviewSettings, prompt: str, embeddings: dict) -> Image.Image:
    size = settings.size or None
    return host.sample([prompt], negative=settings.negative, steps=settings.steps, cfg_scale=settings.cfg_scale,
                       seed=settings.seed, width=size, height=size, embeddings=embeddings)[0]


def _cached(path: Path, make) -> tuple[Path, bool]:
    if path.is_file():
        return path, True
    image = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path, False


def previews(item: Item, host, settings: PreviewSettings, cache_dir: str | Path) -> tuple[dict[str, Path], int]:
    """``item``'s previews (label → PNG path: "without", then "with" or "with 0.5" / "with 1") and how many were
    rendered now (0: all from the cache). Raises ValueError for a kind without previews or a file that does not fit."""
    if item.kind not in PREVIEWED:
        how = "switch to it" if item.kind == "checkpoint" else "use it in txt2img"
        raise ValueError(f"{item.name}: a {item.kind} has no A/B preview ({how})")
    if item.fit is False:
        raise ValueError(f"{item.name} does not fit this model: {item.why}")
    cache = Path(cache_dir).expanduser()
    model = host.model_hash
    common = (model, asdict(settings))
    rendered = 0
    out: dict[str, Path] = {}
    path, hit = _cached(cache / "without" / f"{_key(*common)}.png", lambda: _render(host, settings, settings.prompt, {}))
    out["without"], rendered = path, rendered + (not hit)
    sha = file_sha256(item.path, cache)
    strengths = NETWORK_STRENGTHS if item.kind != "embedding" else (1.0,)
    prompt = prompt_with(item, settings.prompt) if item.kind == "embedding" else settings.prompt
    for strength in strengths:
        label = "with" if item.kind == "embedding" else f"with {strength:g}"

        def make(strength=strength):
            with applied(item, host, strength) as embeddings:
                return _render(host, settings, prompt, embeddings)

        path, hit = _cached(cache / sha[:24] / f"{_key(*common, item.kind, strength, prompt)}.png", make)
        out[label], rendered = path, rendered + (not hit)
    item.previews = out
    return out, rendered
