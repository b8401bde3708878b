"""A pool of rendered toy-world scenes in memory, the training data of every toy model.

Rendering is the slow part of the generator, so each model trains on a fixed pool drawn once from a seed and
reused across steps (with left-right flips, which keep every shape's identity). Captions are drawn per step in
the styles users write: sentences with or without the position, and booru tags in a shuffled order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .world import DEFAULT_MIX, Scene, SceneMix, caption_sentence, caption_tags, render, sample_scene


@dataclass
class ScenePool:
    scenes: list[Scene]
    pixels: torch.Tensor  # uint8 [N, 3, px, px]

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(self, idx: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """Float pixels in [-1, 1] for ``idx``; ``flips`` (bool per row) mirrors those left-right."""
        x = self.pixels[idx].float() / 127.5 - 1.0
        if flips is not None:
            x = torch.where(flips[:, None, None, None], x.flip(3), x)
        return x


def render_pool(n: int, seed: int, allow_held_out: bool = False, px: int = 64,
                mix: SceneMix = DEFAULT_MIX) -> ScenePool:
    """``n`` scenes drawn from ``seed`` and ``mix`` (without the held-out concepts unless ``allow_held_out``),
    rendered."""
    rng = random.Random(f"toy-world-pool/{seed}")
    scenes = [sample_scene(rng, allow_held_out=allow_held_out, mix=mix) for _ in range(n)]
    pixels = np.stack([np.asarray(render(s, px), dtype=np.uint8) for s in scenes])
    return ScenePool(scenes, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())


def mirrored(scene: Scene) -> Scene:
    """The scene flipped left-right (its caption's position changes side)."""
    x, y = scene.position
    return Scene(scene.shape, scene.colour, scene.background, scene.size, (round(1 - x, 4), y), scene.texture)


def random_caption(scene: Scene, rng: random.Random) -> str:
    """One caption of ``scene`` in a style drawn from ``rng``: a sentence (half of them with the position) or
    tags in a shuffled order."""
    r = rng.random()
    if r < 0.5:
        return caption_sentence(scene, with_position=r < 0.2)
    tags = caption_tags(scene).split(", ")
    rng.shuffle(tags)
    return ", ".join(tags)
