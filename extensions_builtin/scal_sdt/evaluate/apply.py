"""One saved step put to use on a host for sampling: an embedding passed by name, a LoRA attached at a strength, a
hypernetwork hooked in at a strength, a DreamBooth checkpoint loaded as a model of its own."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..host.base import Host
from ..textual_inversion.format import Embedding, load_embedding
from .steps import SavedStep

#: methods whose result has a strength to compare
STRENGTHS = ("lora", "hypernetwork")


def bundled_embedding(path: Path, name: str) -> Embedding | None:
    """The pivotal embedding inside a LoRA file (``bundle_emb.NAME.…``, as the WebUI finds it), or None."""
    from safetensors import safe_open

    prefix = f"bundle_emb.{name}."
    with safe_open(str(path), "pt") as f:
        vectors = {k[len(prefix):].replace("string_to_param.*", "*"): f.get_tensor(k) for k in f.keys()
                   if k.startswith(prefix)}
    return Embedding(name=name, vectors=vectors) if vectors else None


@contextlib.contextmanager
def step_applied(method: str, saved: SavedStep, host: Host, name: str, strength: float = 1.0,
                 load_model: Callable[[Path], Host] | None = None) -> Iterator[tuple[Host, dict]]:
    """Yields (the host to sample with, the embeddings to pass it by name) with ``saved`` in use at ``strength``;
    afterwards the host is as it was. A DreamBooth step is a whole checkpoint: ``load_model(path)`` loads it."""
    def vectors(emb: Embedding | None, on: Host) -> dict:
        return {} if emb is None else {name: emb.for_encoders(list(on.widths))}

    if method == "embedding":
        yield host, vectors(load_embedding(saved.path), host)
    elif method == "hypernetwork":
        from ..hypernetwork.apply import apply_hypernetwork, remove_hypernetwork

        hn = apply_hypernetwork(host, saved.path, strength)
        try:
            yield host, {}
        finally:
            remove_hypernetwork(host, hn.name)
    elif method == "lora":
        from ..lora.adapters import load_lora

        lora = load_lora(saved.path, host.lora_targets(), host.family.name).to(host.device).attach(strength)
        try:
            yield host, vectors(bundled_embedding(saved.path, name), host)
        finally:
            lora.detach()
    elif method == "dreambooth":
        if load_model is None:
            raise ValueError("a DreamBooth run's steps are whole checkpoints: compare them with scal-sdt evaluate "
                             "on the command line or the standalone page")
        model = load_model(saved.path)
        try:
            yield model, vectors(load_embedding(saved.embedding) if saved.embedding else None, model)
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    else:
        raise ValueError(f"cannot evaluate a {method} run; methods: embedding, hypernetwork, lora, dreambooth")

