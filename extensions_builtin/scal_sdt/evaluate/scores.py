"""Scores of a saved step from its pictures, in a CLIP image tower's space (from local files only):

- fidelity: the mean cosine similarity of the step's pictures to the training images (how much they look like the
  data; it keeps rising as a run overfits);
- prompt match: how surely each picture matches its own prompt rather than the grid's other prompts, the trained
  name left out of all of them (the mean CLIP probability of its own, chance 1/P): whether the rest of the prompt is
  still drawn. It falls when the concept takes over everything and every prompt draws the training images. Compared
  with the grid's other prompts, not with the text alone: the learnt concept moves every picture away from a text
  without its name alike (a character on a beach matches "on a beach" less than the beach does), which says nothing
  about the rest of the prompt; against the other prompts that shift cancels. Not measured with a single prompt;
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

    @property
    def logit_scale(self) -> float:
        """The CLIP's learnt temperature (its logits are this times the cosines; 100 for OpenAI's)."""
        return float(self.clip.model.logit_scale.exp())

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        f = self.clip.model.encode_text(self.clip.tokenizer(texts).to(self.device)).float()
        return (f / f.norm(dim=-1, keepdim=True)).cpu()


def fidelity(generated: torch.Tensor, training: torch.Tensor) -> float:
    return float((generated @ training.T).mean())


def prompt_match(generated: torch.Tensor, texts: torch.Tensor, own: list[int], scale: float) -> float | None:
    """``generated`` [N, D] pictures, ``texts`` [P, D] the different prompts, ``own[i]`` picture i's prompt: the mean
    softmax probability (at the CLIP's ``scale``) of each picture's own prompt among the P; None when P < 2."""
    if texts.shape[0] < 2:
        return None
    probabilities = (scale * generated @ texts.T).softmax(-1)
    return float(probabilities[torch.arange(len(own)), torch.tensor(own)].mean())


def leakage(step_images: torch.Tensor, base_images: torch.Tensor) -> float:
    return float((1 - (step_images * base_images).sum(-1)).mean())
