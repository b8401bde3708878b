"""What differs between SD1, SD2 and SDXL, written down once as data.

Every other module asks a :class:`Family` instead of branching on a model name.
"""
from __future__ import annotations

from dataclasses import dataclass

BOS_ID = 49406
EOS_ID = 49407


@dataclass(frozen=True)
class EncoderSpec:
    """One text encoder of a family and how its conditioning is read out."""

    key: str  # key in embedding files: 'clip_l' (OpenAI CLIP-L), 'clip_h' (OpenCLIP-H), 'clip_g' (OpenCLIP-bigG)
    layer: int  # index into hidden_states: -1 the last layer, -2 the penultimate one
    final_norm: bool  # apply the final layer norm to that layer's output
    pad_id: int  # OpenAI CLIP pads with the end token, OpenCLIP with 0
    pooled: bool = False  # gives the pooled, projected text embedding (SDXL's OpenCLIP-G)


@dataclass(frozen=True)
class Family:
    name: str  # 'sd1' | 'sd2' | 'sdxl'
    encoders: tuple[EncoderSpec, ...]
    prediction_type: str  # 'epsilon' | 'v_prediction'
    vae_scale: float
    size_conditioning: bool = False  # SDXL: pooled text + (orig size, crop, target size) vector

    @property
    def encoder_keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.encoders)


SD1 = Family("sd1", (EncoderSpec("clip_l", -1, True, EOS_ID),), "epsilon", 0.18215)
SD2 = Family("sd2", (EncoderSpec("clip_h", -2, True, 0),), "v_prediction", 0.18215)
SDXL = Family(
    "sdxl",
    (EncoderSpec("clip_l", -2, False, EOS_ID), EncoderSpec("clip_g", -2, False, 0, pooled=True)),
    "epsilon",
    0.13025,
    size_conditioning=True,
)
FAMILIES = {f.name: f for f in (SD1, SD2, SDXL)}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
