"""The trainable parts of a Stable Diffusion model as diffusers/transformers modules."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .families import Family


@dataclass
class Components:
    """UNet, VAE and text encoders of one model, in the diffusers layout.

    ``text_encoders`` is in the order of ``family.encoders`` (SDXL: CLIP-L, then OpenCLIP-G with projection).
    """

    family: Family
    unet: nn.Module  # diffusers UNet2DConditionModel
    vae: nn.Module  # diffusers AutoencoderKL
    text_encoders: list[nn.Module]  # transformers CLIPTextModel / CLIPTextModelWithProjection
    name: str = "model"
    source: str = ""  # path of the checkpoint or folder, or the built-in name
    extra: dict = field(default_factory=dict)  # e.g. the original config of a checkpoint

    def modules(self) -> dict[str, nn.Module]:
        parts = {"unet": self.unet, "vae": self.vae}
        for spec, te in zip(self.family.encoders, self.text_encoders):
            parts[f"text_encoder.{spec.key}"] = te
        return parts
