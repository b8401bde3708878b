"""The parameters of an embedding: creating one and training one."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import check_bounds, option
from ..host.toy import MODEL_HELP, TOY_NAME
from ..training.options import TrainingOptions

FORMATS = ("safetensors", "pt", "png")
NAME_RE = re.compile(r"^[^\s<>:\"/\\|?*,()\[\]]+$")


def check_name(name: str) -> None:
    if not name:
        raise ValueError("name is required: the word you will write in prompts")
    if not NAME_RE.match(name):
        raise ValueError(f"name {name!r} must be one word without spaces, commas, brackets or path characters")


@dataclass(kw_only=True)
class CreateEmbeddingConfig:
    name: str = option(help="the embedding's name: the word you write in the prompt", group="embedding")
    vectors: int = option(1, "vectors per token (the embedding takes this many token slots)", min=1, max=75,
                          group="embedding")
    init_text: str = option("*", "text whose token vectors start the embedding, spread over the vectors; "
                                 "empty = zeros", group="embedding")
    overwrite: bool = option(False, "replace an existing embedding of that name", group="embedding")
    format: str = option("safetensors", "file format: safetensors, pt (the WebUI's layout) or png (embedded in a "
                                        "picture)", choices=FORMATS, group="embedding")
    model: str = option(TOY_NAME, "model: " + MODEL_HELP, group="embedding")
    out: str = option("embeddings", "embeddings folder", group="embedding")
    device: str = option("auto", "cuda, cpu or auto", group="embedding")

    def __post_init__(self):
        check_name(self.name)
        check_bounds(self)


@dataclass(kw_only=True)
class EmbeddingConfig(TrainingOptions):
    """Textual Inversion: learn a few token vectors that make the frozen model draw the concept in the data."""

    name: str = option(help="the embedding's name: the word you write in the prompt", group="embedding")
    vectors: int = option(1, "vectors per token", min=1, max=75, group="embedding")
    init_text: str = option("*", "text whose token vectors start the embedding; empty = zeros", group="embedding")
    overwrite: bool = option(False, "replace an existing embedding of that name", group="embedding")
    format: str = option("safetensors", "file format of the result: safetensors, pt or png", choices=FORMATS,
                         group="embedding")

    def __post_init__(self):
        check_name(self.name)
        super().__post_init__()
