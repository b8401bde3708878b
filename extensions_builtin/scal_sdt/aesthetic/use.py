"""Aesthetic gradients on a standalone host: the projection of the family's CLIP (only that matrix is kept) and the
host's own text encoder, ready for sampling."""
from __future__ import annotations

from pathlib import Path

import torch

from ..clip_models import load_open_clip
from ..host.toy import TOY_NAME
from .gradient import AestheticGradient
from .make import FAMILY_ENCODERS, load_aesthetic_embedding

AESTHETIC_SUFFIXES = (".safetensors", ".pt")


def find_embedding(spec: str, folder: str) -> Path:
    """A file path, or a name in ``folder`` (NAME.safetensors, else NAME.pt)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    for suffix in AESTHETIC_SUFFIXES:
        if (Path(folder) / f"{spec}{suffix}").is_file():
            return Path(folder) / f"{spec}{suffix}"
    raise FileNotFoundError(f"aesthetic embedding {spec!r} is neither a file nor in {folder} "
                            f"(make one with scal-sdt make-aesthetic-embedding)")


def gradient_for_host(host, model_name: str, clip_spec: str = "") -> tuple[AestheticGradient, str]:
    """(the gradient over the host's first text encoder, that encoder's key in aesthetic files)."""
    key, default = FAMILY_ENCODERS[host.family.name][0]
    spec = clip_spec or ("toy" if model_name == TOY_NAME else default)
    clip = load_open_clip(spec)
    projection = clip.model.text_projection.detach().clone()
    tokenizer = clip.tokenizer
    del clip  # only the projection stays: no second CLIP in memory
    return AestheticGradient(host, host.components.text_encoders[0], projection, tokenizer), key


def embedding_row(path: Path, key: str, gradient: AestheticGradient) -> torch.Tensor:
    rows = load_aesthetic_embedding(path)
    row = rows.get(key, rows.get("clip_l") if path.suffix == ".pt" else None)
    if row is None:
        raise ValueError(f"{path.name} has no {key} row (it holds {', '.join(rows)}): made for another model family")
    if row.shape[-1] != gradient.projection.shape[1]:
        raise ValueError(f"{path.name} is {row.shape[-1]} wide but this model's CLIP embeds in "
                         f"{gradient.projection.shape[1]}: made with another image encoder")
    return row.float()
