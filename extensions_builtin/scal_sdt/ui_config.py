"""The parameters of the standalone page (`scal-sdt ui`); kept apart so the CLI needs no gradio."""
from __future__ import annotations

import dataclasses

from .config import check_bounds, option
from .host.toy import MODEL_HELP, TOY_NAME


@dataclasses.dataclass(kw_only=True)
class UiConfig:
    model: str = option(TOY_NAME, "model to train on: " + MODEL_HELP)
    device: str = option("auto", "cuda, cpu or auto")
    memory_mode: str = option("normal", "normal | medvram | lowvram", choices=("normal", "medvram", "lowvram"))
    host: str = option("127.0.0.1", "address to serve on (keep 127.0.0.1 unless you mean to share it)")
    port: int = option(7861, "port", min=1, max=65535)
    out: str = option("embeddings", "where trained embeddings go (and Generate finds them by name)")
    hypernetworks: str = option("hypernetworks", "where trained hypernetworks go (and Generate finds them by name)")
    checkpoints: str = option("models/Stable-diffusion", "where DreamBooth checkpoints go")
    loras: str = option("models/Lora", "where trained LoRAs go (Generate's --lora takes a file from it)")
    queue: str = option("scal-sdt-queue", "the training queue's folder (the Queue tab; scal-sdt queue --queue)")

    def __post_init__(self):
        check_bounds(self)
