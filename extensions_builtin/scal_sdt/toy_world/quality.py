"""Quality measures on the toy world: does a model draw what its prompt asks for?

A prompt names a shape, a colour and a background; the judge (a classifier trained on the generator's labels)
says which shape and colour each generated image shows. Chance is 1/8 for the shape and 1/12 for the colour.
"""
from __future__ import annotations

import random

from .judge import Judge
from .world import COLOURS, HELD_OUT, SHAPES


def prompt_set(n: int, seed: int = 0, shapes=None, colours=None) -> list[tuple[str, str, str]]:
    """``n`` (shape, colour, background) triples drawn from ``seed``; by default without the held-out concepts."""
    rng = random.Random(f"toy-prompts/{seed}")
    shapes = shapes or [s for s in SHAPES if s != HELD_OUT["shape"]]
    colours = colours or [c for c in COLOURS if c != HELD_OUT["colour"]]
    out = []
    for _ in range(n):
        shape, colour = rng.choice(shapes), rng.choice(colours)
        background = rng.choice(["white"] * 3 + [c for c in colours if c not in (colour, "white", HELD_OUT["colour"])])
        out.append((shape, colour, background))
    return out


def sentence(shape: str, colour: str, background: str, colour_word: str | None = None) -> str:
    """'a large red star on a white background': large, since small shapes are blobs after the toy VAE."""
    return f"a large {colour_word or colour} {shape} on a {background} background"


def prompt_accuracy(host, judge: Judge, triples, seed: int = 0, steps: int = 20, cfg_scale: float = 5.0,
                    colour_words: dict[str, str] | None = None, embeddings=None, batch: int = 16,
                    negative: str = "") -> dict[str, float]:
    """Generate one image per (shape, colour, background) triple (image i with seed + i) and return the fractions
    the judge names the right shape / colour / both. ``colour_words`` replaces a colour's word in the prompt
    (e.g. pink -> the name of an embedding that learned it)."""
    colour_words = colour_words or {}
    prompts = [sentence(s, c, b, colour_words.get(c)) for s, c, b in triples]
    images = []
    for i in range(0, len(prompts), batch):
        images += host.sample(prompts[i:i + batch], negative=negative, steps=steps, cfg_scale=cfg_scale,
                              seed=seed + i, embeddings=embeddings)
    said = judge.predict(images)
    n = max(len(triples), 1)
    return {"shape": sum(p[0] == t[0] for p, t in zip(said, triples)) / n,
            "colour": sum(p[1] == t[1] for p, t in zip(said, triples)) / n,
            "both": sum(p == (t[0], t[1]) for p, t in zip(said, triples)) / n}
