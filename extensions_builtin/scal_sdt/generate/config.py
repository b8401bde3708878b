"""The parameters of `scal-sdt generate`."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, option
from ..host.toy import MODEL_HELP, TOY_NAME


@dataclass(kw_only=True)
class GenerateConfig:
    model: str = option(TOY_NAME, "model: " + MODEL_HELP)
    prompt: str = option(help="the prompt; embedding names from --embeddings work in it as in the WebUI")
    negative: str = option("", "negative prompt")
    n: int = option(1, "number of images (image i uses seed + i)", min=1)
    seed: int = option(0, "seed of the first image")
    steps: int = option(20, "sampling steps (DDIM)", min=1)
    cfg_scale: float = option(7.0, "classifier-free guidance scale", min=0.0)
    width: int = option(0, "width in pixels; 0 = the model's native size", min=0)
    height: int = option(0, "height in pixels; 0 = the model's native size", min=0)
    embeddings: str = option("", "a folder of embeddings (.safetensors, .pt, .bin, .png) usable by name")
    hypernetwork: str = option("", "a hypernetwork .pt file to apply to every image (on the page: also a name from "
                                   "its hypernetworks folder)")
    hypernetwork_strength: float = option(1.0, "its strength (0 = off)", min=0.0)
    out: str = option("outputs", "folder for the PNG files")
    device: str = option("auto", "cuda, cpu or auto")
    memory_mode: str = option("normal", "normal | medvram | lowvram", choices=("normal", "medvram", "lowvram"))

    def __post_init__(self):
        check_bounds(self)
        if not self.prompt:
            raise ValueError("prompt is required")
