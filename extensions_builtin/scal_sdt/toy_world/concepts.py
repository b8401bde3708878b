"""Data sets of the toy world's held-out concepts, for personalisation: what a user would collect and caption to
teach a model something it has never seen."""
from __future__ import annotations

from pathlib import Path

from .world import HELD_OUT, Scene, caption_sentence, make_dataset, render

NAME = "[name]"


def held_out_colour_caption(scene: Scene) -> str:
    """'a large [name] circle on a white background': the sentence with the held-out colour's word replaced by
    ``[name]``, which the trainer fills with the embedding's name (after ``[filewords]``, as the WebUI does)."""
    words = caption_sentence(scene).split(" ")
    return " ".join(NAME if w == scene.colour else w for w in words)


def make_held_out_colour_set(folder, n: int = 16, seed: int = 0) -> list[Scene]:
    """``n`` images of shapes in the held-out colour (pink; never the held-out shape) on plain or textured
    backgrounds of known colours, each with a :func:`held_out_colour_caption`."""
    colour = HELD_OUT["colour"]
    scenes = make_dataset(folder, n, seed=seed, allow_held_out=True, style="sentence",
                          filter=lambda s: s.colour == colour and s.shape != HELD_OUT["shape"]
                          and s.background != colour)
    for i, scene in enumerate(scenes):
        (Path(folder) / f"{i:05d}.txt").write_text(held_out_colour_caption(scene) + "\n", encoding="utf-8")
    return scenes


def make_unnamed_style_set(folder, n: int, seed: int = 0, texture: str = "checks") -> list[Scene]:
    """``n`` pictures with a ``texture`` ("checks": checkered) background whose captions do not say so: a style for
    a hypernetwork to learn (the captions name shape, colour and background colour only)."""
    scenes = make_dataset(folder, n, seed=seed, style="sentence", filter=lambda s: s.texture is None)
    for i, s in enumerate(scenes):
        styled = Scene(s.shape, s.colour, s.background, s.size, s.position, texture)
        render(styled).save(Path(folder) / f"{i:05d}.png")
        (Path(folder) / f"{i:05d}.txt").write_text(caption_sentence(s))
    return scenes
