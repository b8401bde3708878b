"""The parameters of the standalone page (`scal-sdt ui`); kept apart so the CLI needs no gradio."""
from __future__ import annotations

import dataclasses

from .config import check_bounds, option


@dataclasses.dataclass(kw_only=True)
class UiConfig:
    model: str = option("tiny-sd1", "model to train on: tiny-sd1 | tiny-sd2 | tiny-sdxl | a checkpoint file | a "
                                    "diffusers folder")
    device: str = option("auto", "cuda, cpu or auto")
    memory_mode: str = option("normal", "normal | medvram | lowvram", choices=("normal", "medvram", "lowvram"))
    host: str = option("127.0.0.1", "address to serve on (keep 127.0.0.1 unless you mean to share it)")
    port: int = option(7861, "port", min=1, max=65535)
    out: str = option("embeddings", "where trained embeddings go")

    def __post_init__(self):
        check_bounds(self)
