"""Using an aesthetic embedding: finding its file, matching its rows to the model's text towers, and the text
projection a tower without its own needs (from the file, else from the user's CLIP — only that matrix is kept)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..clip_models import load_open_clip
from ..host.tokenizer import clip_token_ids
from ..host.toy import TOY_NAME
from .gradient import AestheticGradient, Tower, hf_tower
from .make import FAMILY_ENCODERS, AestheticFile, load_aesthetic_embedding, text_projection

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


def list_embeddings(folder: str) -> list[str]:
    """The names of the aesthetic embeddings in ``folder``."""
    names = {p.stem for s in AESTHETIC_SUFFIXES for p in Path(folder).glob(f"*{s}")} if Path(folder).is_dir() else set()
    return sorted(names, key=str.lower)


def rows_for(path: Path, file: AestheticFile, keys: list[str]) -> dict[str, torch.Tensor]:
    """The file's row for each tower key (a .pt holds one row: the first tower's)."""
    rows = {keys[0]: file.rows["clip_l"]} if path.suffix == ".pt" else file.rows
    missing = [k for k in keys if k not in rows]
    if missing:
        raise ValueError(f"aesthetic embedding {path.stem!r} has no {', '.join(missing)} row (it holds "
                         f"{', '.join(rows)}): it was made for another model family")
    return {k: rows[k] for k in keys}


def projection_for(key: str, file: AestheticFile, clip_spec: str, family: str, toy: bool = False) -> torch.Tensor:
    """The [width, dim] text projection of ``key``'s CLIP: stored in the file, else from ``clip_spec`` (or the
    family's default CLIP, found offline in the hub cache)."""
    if key in file.projections:
        return file.projections[key].float()
    default = dict(FAMILY_ENCODERS[family])[key]
    spec = clip_spec or ("toy" if toy else default)
    try:
        clip = load_open_clip(spec)
    except Exception as e:
        raise ValueError(f"this aesthetic embedding stores no text projection for {key}, and the CLIP {spec!r} that "
                         f"has it could not be loaded ({e}); re-make the embedding with scal-sdt "
                         f"make-aesthetic-embedding (it stores the projection) or name a local open_clip folder "
                         f"as the aesthetic CLIP") from e
    projection = text_projection(clip.model)
    if projection is None:
        raise ValueError(f"the CLIP {spec!r} has no text projection")
    return projection.clone().float()


def check_widths(towers: list[Tower], rows: dict[str, torch.Tensor], name: str) -> None:
    """Each row is as wide as its tower's image-embedding space, or the file was made with another image encoder."""
    with torch.no_grad():
        for t in towers:
            width = t.project([""]).shape[-1]
            if rows[t.key].shape[-1] != width:
                raise ValueError(f"aesthetic embedding {name!r} is {rows[t.key].shape[-1]} wide for {t.key} but this "
                                 f"model's CLIP embeds in {width}: it was made with another image encoder")


def standalone_gradient(host, path: Path, model_name: str, clip_spec: str = "") -> tuple[AestheticGradient, dict]:
    """(the gradient over a standalone host's text encoders, the embedding's rows by tower key)."""
    file = load_aesthetic_embedding(path)
    family = host.family.name
    keys = [k for k, _ in FAMILY_ENCODERS[family]]
    rows = rows_for(path, file, keys)
    towers = []
    for spec, te, key in zip(host.family.encoders, host.components.text_encoders, keys):
        def ids(texts, pad=spec.pad_id):
            return clip_token_ids(texts, pad)

        own = hasattr(te, "text_projection")  # CLIPTextModelWithProjection: SDXL's OpenCLIP-G
        projection = None if own else projection_for(key, file, clip_spec, family, toy=model_name == TOY_NAME)
        if projection is not None and projection.shape[0] != te.config.hidden_size:
            raise ValueError(f"the {key} text projection for aesthetic embedding {path.stem!r} takes "
                             f"{projection.shape[0]}-wide text features but this model's {key} is "
                             f"{te.config.hidden_size} wide: another CLIP than the model's")
        towers.append(hf_tower(key, te, ids, projection))
    with host.on_device("text"):
        check_widths(towers, rows, path.stem)
    return AestheticGradient(host, towers), rows


def sampling_keywords(host, path: Path, settings) -> dict:
    """The ``host.sample`` keywords that apply the aesthetic embedding ``path`` with ``settings`` ({} at weight 0):
    the host's own way where it has one (the WebUI's: as txt2img's aesthetic accordion), else our text-encoder tuning
    on a standalone host. The library's previews and the evaluation grid both draw through it."""
    if not settings.active:
        return {}
    own = getattr(host, "aesthetic_sampling", None)
    if own is not None:
        return own(path, settings)
    gradient, rows = standalone_gradient(host, path, host.model_name)

    def encode(prompts, negative, embeddings, size):
        return gradient.conditioning(prompts, rows, settings, size, negative=negative, embeddings=embeddings)

    return {"encode": encode}
