"""The parameters of `scal-sdt save-checkpoint`: any model the standalone host reads, written as the original
single-file layout the WebUI (and ComfyUI, and diffusers' single-file loader) reads, with the WebUI's yaml."""
from __future__ import annotations

from dataclasses import dataclass

from .config import check_bounds, option
from .host.toy import MODEL_HELP, TOY_NAME


@dataclass(kw_only=True)
class SaveCheckpointConfig:
    model: str = option(TOY_NAME, "model: " + MODEL_HELP)
    out: str = option(help="the .safetensors file to write, e.g. WEBUI/models/Stable-diffusion/toy.safetensors")
    fp16: bool = option(False, "store the weights in half precision")
    overwrite: bool = option(False, "replace an existing file")

    def __post_init__(self):
        check_bounds(self)
        if not self.out.lower().endswith(".safetensors"):
            raise ValueError(f"out: {self.out!r} must end with .safetensors")
