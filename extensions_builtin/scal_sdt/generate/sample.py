"""`scal-sdt generate`: PNG files from a prompt, with the WebUI's generation parameters in their text chunk."""
from __future__ import annotations

import contextlib
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from ..files import atomic_path, next_number
from ..host.base import Host
from ..textual_inversion.format import EmbeddingError, check_fits, load_embedding
from .config import GenerateConfig

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".png", ".webp")


def load_embedding_folder(folder: Path, host: Host, report=print) -> dict[str, dict]:
    """Every embedding in ``folder`` (recursively) that fits ``host``, by name; the others are reported and skipped."""
    found: dict[str, dict] = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() not in EMBEDDING_SUFFIXES or path.name.lower().endswith(".preview.png"):
            continue
        try:
            emb = load_embedding(path)
            check_fits(emb, host.widths)
        except EmbeddingError as e:
            if path.suffix.lower() in (".png", ".webp") and "holds no embedding" in str(e):
                continue  # just a picture
            report(f"skipped {path}: {e}")
            continue
        found[emb.name] = emb.for_encoders(list(host.widths))
    return found


def generation_parameters(cfg: GenerateConfig, seed: int, width: int, height: int, model_name: str, model_hash: str) -> str:
    """The WebUI's infotext layout, so PNG Info and "send to txt2img" read our files."""
    lines = [cfg.prompt]
    if cfg.negative:
        lines.append(f"Negative prompt: {cfg.negative}")
    params = (f"Steps: {cfg.steps}, Sampler: DDIM, CFG scale: {cfg.cfg_scale:g}, Seed: {seed}, "
              f"Size: {width}x{height}, Model hash: {model_hash}, Model: {model_name}")
    if cfg.hypernetwork:
        params += f", Hypernet: {Path(cfg.hypernetwork).stem}, Hypernet strength: {cfg.hypernetwork_strength:g}"

    if cfg.aesthetic:  # the aesthetic-gradients extension's infotext keys
        params += "".join(f", {k}: {v}" for k, v in aesthetic_settings(cfg).infotext(Path(cfg.aesthetic).stem).items())
    lines.append(params)
    return "\n".join(lines)


def generate(cfg: GenerateConfig, host: Host, report=print) -> list[Path]:
    embeddings = load_embedding_folder(Path(cfg.embeddings), host, report) if cfg.embeddings else {}
    used = {name: vec for name, vec in embeddings.items() if name in cfg.prompt or name in cfg.negative}
    width = cfg.width or host.native_resolution
    height = cfg.height or host.native_resolution
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as applied:
        if cfg.hypernetwork:
            from ..hypernetwork.apply import apply_hypernetwork, remove_hypernetwork

            name = apply_hypernetwork(host, cfg.hypernetwork, cfg.hypernetwork_strength).name
            applied.callback(remove_hypernetwork, host, name)
        if cfg.lora:
            from ..lora.adapters import load_lora

            lora = load_lora(cfg.lora, host.lora_targets(), host.family.name).to(host.device).attach(cfg.lora_strength)
            applied.callback(lora.detach)
        return _sample(cfg, host, used, width, height, out, report)


def aesthetic_settings(cfg: GenerateConfig):
    from ..aesthetic.gradient import AestheticSettings

    return AestheticSettings(cfg.aesthetic_weight, cfg.aesthetic_steps, cfg.aesthetic_lr, cfg.aesthetic_slerp,
                             cfg.aesthetic_slerp_angle, cfg.aesthetic_text, cfg.aesthetic_text_negative,
                             cfg.aesthetic_batchwise)


def aesthetic_encoder(cfg: GenerateConfig, host: Host, report=print):
    """The ``encode`` for ``host.sample`` that applies the aesthetic embedding, or None when it is off."""
    if not cfg.aesthetic:
        return None
    from ..aesthetic.use import find_embedding, standalone_gradient

    path = find_embedding(cfg.aesthetic, cfg.aesthetic_dir)
    gradient, rows = standalone_gradient(host, path, cfg.model, cfg.aesthetic_clip)
    settings = aesthetic_settings(cfg)
    report(f"aesthetic embedding {path.name}: weight {cfg.aesthetic_weight:g}, {cfg.aesthetic_steps} steps")

    def encode(prompts, negative, embeddings, size):
        return gradient.conditioning(prompts, rows, settings, size, negative=negative, embeddings=embeddings)

    encode.gradient = gradient
    return encode


def _sample(cfg: GenerateConfig, host: Host, used: dict, width: int, height: int, out: Path, report=print) -> list[Path]:
    """Image i is ``NNNNN-SEED.png`` as the WebUI names it, numbered on from the folder's largest number: a second
    run never overwrites the first."""
    paths = []
    number = next_number(out)
    encode = aesthetic_encoder(cfg, host, report)
    extra = {"encode": encode} if encode is not None else {}
    for i in range(cfg.n):
        image = host.sample([cfg.prompt], negative=cfg.negative, steps=cfg.steps, cfg_scale=cfg.cfg_scale,
                            seed=cfg.seed + i, width=width, height=height, embeddings=used, **extra)[0]
        info = PngInfo()
        info.add_text("parameters", generation_parameters(cfg, cfg.seed + i, width, height, host.model_name,
                                                          host.model_hash))
        while any(out.glob(f"{number:05d}-*")):  # another run took it meanwhile
            number += 1
        path = out / f"{number:05d}-{cfg.seed + i}.png"
        number += 1
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
        paths.append(path)
    if encode is not None and cfg.n > 1:
        report(f"aesthetic: the tuned conditioning was reused for {encode.gradient.hits} of {cfg.n} images")
    return paths
