"""Create an embedding: its first vectors, from an init text as the WebUI does."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import turn_on
from ..host.base import Host
from .format import Embedding, load_embedding, save_embedding


def init_vectors(host: Host, init_text: str, num_vectors: int) -> dict[str, torch.Tensor]:
    """Per encoder key a [num_vectors, width] tensor: the init text's token vectors spread over the vectors
    (vector i takes token i·n_tokens/num_vectors, as the WebUI does); zeros for an empty init text."""
    if num_vectors < 1:
        raise ValueError("vectors must be ≥ 1")
    if not init_text:
        return {e.key: torch.zeros(num_vectors, e.width) for e in host.text_encoders}
    tokens = host.token_vectors(init_text)
    out = {}
    for key, table in tokens.items():
        if table.shape[0] == 0:
            raise ValueError(f"init text {init_text!r} has no tokens")
        idx = [i * table.shape[0] // num_vectors for i in range(num_vectors)]
        out[key] = table[idx].clone().float()
    return out


def embedding_path(out_dir: Path, name: str, fmt: str) -> Path:
    return Path(out_dir) / f"{name}.{ {'safetensors': 'safetensors', 'pt': 'pt', 'png': 'png'}[fmt] }"


def existing_embeddings(out_dir: Path, name: str) -> list[Path]:
    return [p for ext in ("safetensors", "pt", "bin", "png", "webp") if (p := Path(out_dir) / f"{name}.{ext}").exists()]


def create_embedding(host: Host, name: str, num_vectors: int, init_text: str, out_dir: Path,
                     overwrite: bool = False, fmt: str = "safetensors") -> Path:
    """Write a fresh embedding file; refuses a name that exists unless ``overwrite``."""
    clash = existing_embeddings(out_dir, name)
    if clash and not overwrite:
        raise FileExistsError(f"embedding {name!r} already exists ({clash[0]}); choose another name or "
                                f"{turn_on('overwrite')}")
    emb = Embedding(name=name, vectors=file_vectors(host, init_vectors(host, init_text, num_vectors)), step=0,
                    sd_checkpoint=host.model_hash, sd_checkpoint_name=host.model_name)
    return save_embedding(emb, embedding_path(out_dir, name, fmt), fmt)


def file_vectors(host: Host, vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One-encoder models store a single tensor ('*'); SDXL stores clip_l and clip_g."""
    if len(vectors) == 1:
        return {"*": next(iter(vectors.values()))}
    return dict(vectors)


def load_for_host(path: Path, host: Host, name: str | None = None) -> Embedding:
    """Load an embedding and check it fits ``host`` (refused with its name and both widths if not)."""
    from .format import check_fits

    emb = load_embedding(path, name)
    check_fits(emb, host.widths)
    return emb
