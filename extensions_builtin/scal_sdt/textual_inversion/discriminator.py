"""APT's optional discriminator: a score of the decoded image from a classifier the user has, differentiable so its
gradient reaches the embeddings. An open_clip image encoder with a score head on the normalised image embedding:
a single linear layer, or the LAION aesthetic predictor's MLP (``layers.0`` … ``layers.7``) — the usual
"aesthetic score" of the SD community (the DreamArtist author used a ConvNeXt aesthetic classifier)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..clip_models import load_open_clip

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def load_head(path: str, dim: int) -> nn.Module:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"discriminator head {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if "layers.0.weight" in sd:  # improved-aesthetic-predictor's MLP
        head = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                             nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        head.load_state_dict({k.removeprefix("layers."): v for k, v in sd.items()})
    elif set(sd) >= {"weight", "bias"} and sd["weight"].shape == (1, dim):
        head = nn.Linear(dim, 1)
        head.load_state_dict({"weight": sd["weight"], "bias": sd["bias"]})
    else:
        raise ValueError(f"{p.name}: expected a linear layer (weight [1, {dim}], bias) or the LAION aesthetic MLP "
                         f"(layers.0.weight ...), found {sorted(sd)[:4]}")
    return head.eval().requires_grad_(False)


def embed_dim(model) -> int:
    """The width of an open_clip model's image embedding."""
    return model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None else model.embed_dim


class ClipScore(nn.Module):
    """A score head on an open_clip image tower; the image is resized and normalised inside, differentiably."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder.eval().requires_grad_(False), head.eval().requires_grad_(False)
        size = encoder.image_size
        self.size = size if isinstance(size, int) else size[0]
        cfg = getattr(encoder, "preprocess_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", OPENAI_STD)).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def load(cls, clip_spec: str, head_path: str, device="cpu") -> "ClipScore":
        clip = load_open_clip(clip_spec, str(device))
        return cls(clip.model.visual, load_head(head_path, embed_dim(clip.model))).to(device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores [B] of images in [-1, 1] (gradients flow to the images)."""
        x = F.interpolate((images.float() + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        f = self.encoder((x - self.mean) / self.std)
        return self.head(f / f.norm(dim=-1, keepdim=True)).squeeze(-1)
