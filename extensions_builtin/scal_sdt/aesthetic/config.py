"""The parameters of `scal-sdt make-aesthetic-embedding`."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import check_bounds, option
from ..host.toy import MODEL_HELP, TOY_NAME


@dataclass(kw_only=True)
class AestheticEmbeddingConfig:
    images: str = option(help="the folder of images whose look the embedding captures", group="embedding", folder=True)
    name: str = option(help="the embedding's name (its file name)", group="embedding")
    model: str = option(TOY_NAME, "the model it is for (its family picks the image encoder): " + MODEL_HELP,
                        group="embedding")
    clip: str = option("", "the image encoder(s), comma-separated for SDXL: a local open_clip folder, 'toy', hf-hub:REPO "
                       "or ARCH/PRETRAINED in your hub cache; '' = the family's own (SD1 ViT-L-14/openai, SD2 "
                       "ViT-H-14/laion2b_s32b_b79k, SDXL both of ViT-L-14/openai and ViT-bigG-14/laion2b_s39b_b160k)",
                       group="embedding")
    out: str = option("models/aesthetic_embeddings", "folder for NAME.pt and NAME.safetensors", group="embedding", folder=True)
    batch_size: int = option(16, "images per encoder call", min=1, group="embedding")
    overwrite: bool = option(False, "replace an existing embedding of that name", group="embedding")
    device: str = option("auto", "cuda, cpu or auto", group="embedding")

    def __post_init__(self):
        check_bounds(self)
        if not self.images:
            raise ValueError("images is required: the folder of images")
        if not self.name or not re.match(r"^(?!\.)[^\s\x00-\x1f<>:\"/\\|?*]+$", self.name):
            raise ValueError(f"name {self.name!r} must be one word without path characters")


#: the accordion's presets: (weight, steps, learning rate, slerp); the first is the default. Users' experience (the guide
#: this grew from): a weight under ~0.25 improves the look without changing the content, and aesthetic gradients work
#: best together with a hypernetwork for an artist's style.
AESTHETIC_PRESETS: dict[str, tuple[float, int, float, bool]] = {
    "artist style, with a hypernetwork": (0.2, 5, 1e-4, False),
    "subtle look": (0.1, 5, 1e-4, False),
    "the paper's (changes the content)": (0.9, 5, 1e-4, False),
    "custom": (0.2, 5, 1e-4, False),
}
DEFAULT_AESTHETIC_PRESET = next(iter(AESTHETIC_PRESETS))
