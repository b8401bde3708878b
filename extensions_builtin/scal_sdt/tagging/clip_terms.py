"""CLIP interrogation: rank a list of terms (tags, artists, mediums, ...) against each image with an open_clip
model and add the best ones to the caption."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..clip_models import load_open_clip
from .preprocess import on_white


def read_terms(text: str) -> list[str]:
    """A file with one term per line, or the terms themselves separated by commas."""
    path = Path(text).expanduser()
    if text and path.is_file():
        terms = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
    else:
        terms = [t.strip() for t in text.split(",")]
    terms = list(dict.fromkeys(t for t in terms if t))
    if not terms:
        raise ValueError("clip_terms: give a file with one term per line, or terms separated by commas")
    return terms


class ClipTerms:
    def __init__(self, model: str, terms: list[str], top: int, device: str = "cpu", batch: int = 256):
        self.clip = load_open_clip(model, device)
        self.device, self.terms, self.top = device, terms, top
        feats = []
        with torch.no_grad():
            for i in range(0, len(terms), batch):
                t = self.clip.model.encode_text(self.clip.tokenizer(terms[i:i + batch]).to(device))
                feats.append(t / t.norm(dim=-1, keepdim=True))
        self.text = torch.cat(feats)

    def prepare(self, image) -> np.ndarray:
        return self.clip.preprocess(on_white(image)).numpy()

    def best(self, rows: np.ndarray) -> list[dict[str, float]]:
        """The ``top`` terms of each image with their cosine similarity, best first."""
        with torch.no_grad():
            f = self.clip.model.encode_image(torch.from_numpy(rows).to(self.device))
            sims = (f / f.norm(dim=-1, keepdim=True)) @ self.text.T
            values, idx = sims.topk(min(self.top, len(self.terms)), dim=1)
        return [{self.terms[i]: float(v) for v, i in zip(vs.tolist(), ids.tolist())} for vs, ids in zip(values, idx)]
