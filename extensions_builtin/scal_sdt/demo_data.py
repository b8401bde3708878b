"""A small built-in data set for the offline demo and tests: coloured shapes with captions in both styles."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "purple": (140, 50, 180), "orange": (240, 140, 30), "white": (250, 250, 250), "black": (20, 20, 20),
           "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "star")


def draw_shape(shape: str, colour: str, background: str, size: int = 64, scale: float = 0.6,
               centre: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    img = Image.new("RGB", (size, size), COLOURS[background])
    d = ImageDraw.Draw(img)
    r = scale * size / 2
    cx, cy = centre[0] * size, centre[1] * size
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "star":
        import math

        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return img


def make_concept_folder(folder: Path, shape: str = "star", colour: str = "orange", count: int = 12,
                        seed: int = 0, size: int = 64, background: str | None = None) -> Path:
    """Images of one concept (a shape in a colour) on varied backgrounds (or one given background), with
    booru-style captions."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backgrounds = [c for c in COLOURS if c != colour]
    for i in range(count):
        bg = background or rng.choice(backgrounds)
        img = draw_shape(shape, colour, bg, size, scale=rng.uniform(0.5, 0.8),
                         centre=(rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)))
        img.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"{bg}_background, simple_background")
    return folder

