"""Make an aesthetic embedding: the L2-normalised mean of the L2-normalised CLIP image embeddings of a folder, with
the image encoder that matches the model family, saved as the existing extension does (``NAME.pt``: a [1, dim]
tensor, readable with ``weights_only=True``) plus ``NAME.safetensors`` (one row per encoder key: clip_l, clip_h,
clip_g) and ``NAME.preview.png`` (a grid of the images, for the picker)."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image, UnidentifiedImageError

from ..clip_models import load_open_clip
from ..files import atomic_path, save_safetensors, save_webui_pt
from ..host.families import SD1, SD2, SDXL, Family
from ..host.toy import TOY_NAME
from ..training.frozen_job import image_grid
from ..training.images import image_files
from ..training.report import Reporter
from ..config import turn_on
from .config import AestheticEmbeddingConfig

#: the image encoders whose embedding space each family's text encoders share, with their keys in our files
FAMILY_ENCODERS: dict[str, list[tuple[str, str]]] = {
    "sd1": [("clip_l", "ViT-L-14/openai")],
    "sd2": [("clip_h", "ViT-H-14/laion2b_s32b_b79k")],
    "sdxl": [("clip_l", "ViT-L-14/openai"), ("clip_g", "ViT-bigG-14/laion2b_s39b_b160k")],
}
BUILT_IN = {TOY_NAME: SD1, "tiny-sd1": SD1, "tiny-sd2": SD2, "tiny-sdxl": SDXL}


def family_of(model: str) -> Family:
    """The model's family, from the built-in names or the checkpoint's keys (a .safetensors is not loaded)."""
    if model in BUILT_IN:
        return BUILT_IN[model]
    path = Path(model)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        from ..host.checkpoint import UNET_PREFIX, detect_family

        with safe_open(str(path), framework="pt") as f:
            keys = {k: None for k in f.keys()}
            conv = UNET_PREFIX + "input_blocks.0.0.weight"
            if conv in keys:
                keys[conv] = SimpleNamespace(shape=tuple(f.get_slice(conv).get_shape()))
        return detect_family(keys)
    from ..host.standalone import load_components

    return load_components(model).family


def encoders_for(cfg: AestheticEmbeddingConfig, family: Family | None = None) -> list[tuple[str, str]]:
    """(key, open_clip spec) per image encoder; ``family``: the host's (the WebUI's loaded model), else cfg.model's."""
    fam = family or family_of(cfg.model)
    defaults = FAMILY_ENCODERS[fam.name]
    if cfg.model == TOY_NAME and not cfg.clip:
        return [("clip_l", "toy")]
    if not cfg.clip:
        return defaults
    specs = [s.strip() for s in cfg.clip.split(",") if s.strip()]
    if len(specs) != len(defaults):
        raise ValueError(f"clip: {fam.name} needs {len(defaults)} image encoder(s) "
                         f"({', '.join(k for k, _ in defaults)}), got {len(specs)}")
    return [(key, spec) for (key, _), spec in zip(defaults, specs)]


PROJECTION = ".text_projection"  # NAME.safetensors: KEY.text_projection, [text width, embedding dim]


def text_projection(model) -> torch.Tensor | None:
    """An open_clip model's text projection as [text width, embedding dim] (a matrix, or a Linear's weight)."""
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return proj.weight.detach().T
    return proj.detach() if torch.is_tensor(proj) else None


@dataclass
class AestheticResult:
    paths: list[Path]
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def mean_embedding(clip, images: list[Image.Image], batch_size: int, device) -> torch.Tensor:
    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([clip.preprocess(im) for im in images[i:i + batch_size]]).to(device)
        f = clip.model.encode_image(x).float()
        feats.append(f / f.norm(dim=-1, keepdim=True))
    mean = torch.cat(feats).mean(dim=0, keepdim=True)
    return (mean / mean.norm(dim=-1, keepdim=True)).cpu()


def make_aesthetic_embedding(cfg: AestheticEmbeddingConfig, reporter: Reporter | None = None,
                             family: Family | None = None) -> AestheticResult:
    from ..host.placement import resolve_device
    from ..tagging.preprocess import on_white

    reporter = reporter or Reporter()
    out = Path(cfg.out)
    targets = [out / f"{cfg.name}.pt", out / f"{cfg.name}.safetensors"]
    if not cfg.overwrite and any(p.exists() for p in targets):
        raise FileExistsError(f"aesthetic embedding {cfg.name!r} already exists in {out}; "
                              f"{turn_on('overwrite')}")
    encoders = encoders_for(cfg, family)
    images, skipped = [], []
    for path in image_files(cfg.images):
        try:
            with Image.open(io.BytesIO(path.read_bytes())) as im:
                im.load()
                images.append(on_white(im).copy())
        except (UnidentifiedImageError, OSError, ValueError) as e:
            skipped.append((str(path), f"unreadable image ({type(e).__name__}: {e})"))
            reporter.message(f"skipped {path}: unreadable image")
    if not images:
        raise ValueError(f"no readable images in {cfg.images}")
    device = resolve_device(cfg.device)
    rows, projections = {}, {}
    for key, spec in encoders:
        reporter.message(f"{key}: {spec}, {len(images)} images")
        clip = load_open_clip(spec, str(device))
        rows[key] = mean_embedding(clip, images, cfg.batch_size, device)
        projection = text_projection(clip.model)
        if projection is not None:  # kept so generation needs no CLIP: SD1's and SDXL's CLIP-L text model lacks it
            projections[f"{key}{PROJECTION}"] = projection.float().cpu().contiguous()
        del clip
    first = rows[encoders[0][0]]
    save_webui_pt(first.clone(), targets[0])  # the existing extension's format: a [1, dim] tensor
    meta = {"name": cfg.name, "images": str(len(images)), "encoders": json.dumps(dict(encoders)),
            "model": cfg.model, "trainer": "scal-sdt aesthetic embedding"}
    save_safetensors({**{k: v.contiguous() for k, v in rows.items()}, **projections}, targets[1], metadata=meta)
    preview = out / f"{cfg.name}.preview.png"
    thumbs = []
    for im in images[:16]:
        t = im.copy()
        t.thumbnail((128, 128))
        thumbs.append(t.resize((128, 128)))
    with atomic_path(preview) as tmp:
        image_grid(thumbs).save(tmp, format="PNG")
    return AestheticResult(targets + [preview], len(images), skipped)


@dataclass
class AestheticFile:
    rows: dict[str, torch.Tensor]  # encoder key -> [1, dim] unit row
    projections: dict[str, torch.Tensor]  # encoder key -> [text width, dim], when stored


def load_aesthetic_embedding(path) -> AestheticFile:
    """Rows (and text projections) per encoder key from NAME.safetensors, or the [1, dim] tensor of a NAME.pt (the
    existing extension's files; read with weights_only=True) under ``clip_l``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        values = load_file(str(path))
        return AestheticFile({k: v.float() for k, v in values.items() if not k.endswith(PROJECTION)},
                             {k[:-len(PROJECTION)]: v for k, v in values.items() if k.endswith(PROJECTION)})
    value = torch.load(str(path), map_location="cpu", weights_only=True)
    if not torch.is_tensor(value) or value.dim() != 2 or value.shape[0] != 1:
        raise ValueError(f"{path.name}: an aesthetic embedding is a [1, dim] tensor, this holds "
                         f"{type(value).__name__} {getattr(value, 'shape', '')}")
    return AestheticFile({"clip_l": value.float()}, {})
