"""Scores of a saved step from its pictures, in a CLIP image tower's space (from local files only):

- fidelity: the mean cosine similarity of the step's pictures to the training images (how much they look like the
  data; it keeps rising as a run overfits);
- prompt match: the mean cosine of each picture to its prompt's text with the trained name left out (whether the rest
  of the prompt is still drawn; it falls when the concept takes over everything);
- leakage: the mean cosine distance between pictures of the class prompt WITHOUT the trigger at this step and the
  base model's, seed for seed (how much the rest of the model moved; 0 for an embedding, which acts only by name).
"""
from __future__ import annotations

import torch
from PIL import Image

from ..clip_models import TOY_CLIP, load_open_clip


def family_clip(family: str, model: str) -> str:
    """The CLIP image tower a family's text encoder shares its space with (the toy model: the toy CLIP)."""
    from ..aesthetic.make import FAMILY_ENCODERS
    from ..host.toy import TOY_NAME

    return TOY_CLIP if model == TOY_NAME else FAMILY_ENCODERS[family][0][1]


class ClipScorer:
    def __init__(self, spec: str, device: str = "cpu"):
        self.clip = load_open_clip(spec, device)
        self.device = device

    @torch.no_grad()
    def images(self, images: list[Image.Image], batch: int = 32) -> torch.Tensor:
        """[N, D] unit image embeddings."""
        out = []
        for i in range(0, len(images), batch):
            x = torch.stack([self.clip.preprocess(im.convert("RGB")) for im in images[i:i + batch]]).to(self.device)
            f = self.clip.model.encode_image(x).float()
            out.append(f / f.norm(dim=-1, keepdim=True))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        f = self.clip.model.encode_text(self.clip.tokenizer(texts).to(self.device)).float()
        return (f / f.norm(dim=-1, keepdim=True)).cpu()


def fidelity(generated: torch.Tensor, training: torch.Tensor) -> float:
    return float((generated @ training.T).mean())


def prompt_match(generated: torch.Tensor, texts: torch.Tensor) -> float:
    return float((generated * texts).sum(-1).mean())


def leakage(step_images: torch.Tensor, base_images: torch.Tensor) -> float:
    return float((1 - (step_images * base_images).sum(-1)).mean())
