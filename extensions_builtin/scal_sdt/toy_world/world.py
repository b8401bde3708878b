"""The toy world: scenes, their vocabularies, a renderer and captions in two styles.

Everything is deterministic: a scene is drawn from a ``random.Random`` and rendered without any other
source of randomness, so the same seed gives byte-identical data sets.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "cyan": (40, 200, 210), "blue": (40, 70, 220), "purple": (140, 60, 190), "pink": (245, 130, 190),
    "brown": (130, 80, 40), "black": (20, 20, 20), "grey": (128, 128, 128), "white": (250, 250, 250),
}
#: background colours (every named colour; white is the most common, as in users' data)
BACKGROUNDS: tuple[str, ...] = tuple(COLOURS)
#: background textures: None (plain) or a pattern drawn in a shade of the background colour
TEXTURES: tuple[str, ...] = ("stripes", "checks", "dots")
TEXTURE_WORDS = {"stripes": "striped", "checks": "checkered", "dots": "polka-dot"}
TEXTURE_TAGS = {"stripes": "striped_background", "checks": "checkered_background", "dots": "polka_dot_background"}
#: size name -> radius of the shape as a fraction of the image side
SIZES: dict[str, float] = {"small": 0.17, "medium": 0.25, "large": 0.34}
#: concepts kept out of every base model's training (as shape colour and as background)
HELD_OUT: dict[str, str] = {"shape": "heart", "colour": "pink"}

MARGIN = 0.04  # the shape's bounding circle keeps at least this far from every edge
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: tuple[float, float]  # centre (x, y), both in [0, 1]; y grows downwards
    texture: str | None = None

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        for c in (self.colour, self.background):
            if c not in COLOURS:
                raise ValueError(f"unknown colour {c!r}; known: {', '.join(COLOURS)}")
        if self.colour == self.background:
            raise ValueError("the shape colour must differ from the background colour")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")
        if self.texture is not None and self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}; known: {', '.join(TEXTURES)}")
        r = SIZES[self.size]
        for v in self.position:
            if not (r + MARGIN - 1e-9 <= v <= 1 - r - MARGIN + 1e-9):
                raise ValueError(f"position {self.position} puts a {self.size} shape outside the image")

    @property
    def uses_held_out(self) -> bool:
        return (self.shape == HELD_OUT["shape"] or self.colour == HELD_OUT["colour"]
                or self.background == HELD_OUT["colour"])

    @property
    def position_name(self) -> str:
        """'top left', 'centre', 'bottom', ... from the centre's coordinates."""
        x, y = self.position
        h = "left" if x < 0.42 else "right" if x > 0.58 else ""
        v = "top" if y < 0.42 else "bottom" if y > 0.58 else ""
        return f"{v} {h}".strip() or "centre"


@dataclass(frozen=True)
class SceneMix:
    """How often sample_scene draws each background and size: white is ``white_weight`` times as likely as another
    background colour, a texture comes with ``texture_rate`` of the scenes, sizes uniform or by ``size_weights``
    (small, medium, large)."""
    white_weight: float = 3.0
    texture_rate: float = 0.35
    size_weights: tuple[float, float, float] | None = None


#: every data set's mix (the CLIP, VAE, tagger and judge train on it; tests draw their data sets from it)
DEFAULT_MIX = SceneMix()
#: the base UNet's: shapes the toy VAE keeps legible (large, on white) more often, so that the model learns to draw
#: the shape and not only the colour (half the backgrounds white where the shape is not, a large shape half the
#: time). Textures stay as common as elsewhere: their shades (light reds and purples) are the nearest the base model
#: comes to the held-out pink, and with a tenth of them Textual Inversion could no longer teach it pink.
UNET_MIX = SceneMix(white_weight=9.0, size_weights=(0.15, 0.35, 0.50))


def sample_scene(rng: random.Random, allow_held_out: bool = False, mix: SceneMix = DEFAULT_MIX) -> Scene:
    """Draw one scene; without ``allow_held_out`` the held-out shape and colour never appear."""
    shapes = [s for s in SHAPES if allow_held_out or s != HELD_OUT["shape"]]
    colours = [c for c in COLOURS if allow_held_out or c != HELD_OUT["colour"]]
    shape = rng.choice(shapes)
    colour = rng.choice(colours)
    bgs = [c for c in colours if c != colour]
    weights = [mix.white_weight if c == "white" else 1.0 for c in bgs]
    background = rng.choices(bgs, weights)[0]
    texture = rng.choice(TEXTURES) if rng.random() < mix.texture_rate else None
    size = rng.choice(tuple(SIZES)) if mix.size_weights is None else rng.choices(tuple(SIZES), mix.size_weights)[0]
    lo, hi = SIZES[size] + MARGIN, 1 - SIZES[size] - MARGIN
    position = (round(rng.uniform(lo, hi), 4), round(rng.uniform(lo, hi), 4))
    return Scene(shape, colour, background, size, position, texture)


def texture_colour(background: str) -> tuple[int, int, int]:
    """The shade a texture is drawn in: the background colour moved 30% towards black (light colours)
    or white (dark ones)."""
    rgb = COLOURS[background]
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target = 0 if lum > 110 else 255
    return tuple(round(c + 0.3 * (target - c)) for c in rgb)


def _draw_texture(d: ImageDraw.ImageDraw, texture: str, side: int, fill) -> None:
    period = side // 8
    if texture == "stripes":
        for k in range(-side, side, period):
            d.polygon([(k, 0), (k + period // 2, 0), (k + period // 2 + side, side), (k + side, side)], fill=fill)
    elif texture == "checks":
        for i in range(8):
            for j in range(8):
                if (i + j) % 2:
                    d.rectangle([i * period, j * period, (i + 1) * period - 1, (j + 1) * period - 1], fill=fill)
    elif texture == "dots":
        r = period / 4
        for i in range(8):
            for j in range(8):
                cx, cy = (i + 0.5) * period, (j + 0.5) * period
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def _polygon(cx, cy, r, n, start, radii=None):
    pts = []
    for i in range(n):
        rad = r if radii is None else radii[i % len(radii)]
        a = start + i * 2 * math.pi / n
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.75
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy + r * 0.15, r * 0.95, 3, -math.pi / 2), fill=fill)
    elif shape == "star":
        d.polygon(_polygon(cx, cy + r * 0.05, r, 10, -math.pi / 2, radii=(r, r * 0.42)), fill=fill)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r * 0.95, 6, 0), fill=fill)
    elif shape == "cross":
        a, b = r * 0.85, r * 0.3
        d.rectangle([cx - a, cy - b, cx + a, cy + b], fill=fill)
        d.rectangle([cx - b, cy - a, cx + b, cy + a], fill=fill)
    elif shape == "heart":
        lr = r * 0.45
        for ox in (-lr, lr):
            d.ellipse([cx + ox - lr, cy - r * 0.35 - lr, cx + ox + lr, cy - r * 0.35 + lr], fill=fill)
        d.polygon([(cx - 2 * lr, cy - r * 0.3), (cx + 2 * lr, cy - r * 0.3), (cx, cy + r * 0.9)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)], fill=fill)
    else:  # pragma: no cover - Scene validates shapes
        raise ValueError(shape)


def render(scene: Scene, px: int = 64) -> Image.Image:
    """Draw the scene at 4x the size and downsample (box filter), so edges are antialiased."""
    side = px * _SUPERSAMPLE
    img = Image.new("RGB", (side, side), COLOURS[scene.background])
    d = ImageDraw.Draw(img)
    if scene.texture:
        _draw_texture(d, scene.texture, side, texture_colour(scene.background))
    r = SIZES[scene.size] * side
    _draw_shape(d, scene.shape, scene.position[0] * side, scene.position[1] * side, r, COLOURS[scene.colour])
    return img.resize((px, px), Image.BOX)


def _background_words(scene: Scene) -> str:
    return f"{scene.background} {TEXTURE_WORDS[scene.texture]}" if scene.texture else scene.background


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_sentence(scene: Scene, with_position: bool = False) -> str:
    """'a large red star on a blue background', 'a small green circle on a white striped background'."""
    bg = _background_words(scene)
    text = f"a {scene.size} {scene.colour} {scene.shape} on {_article(bg)} {bg} background"
    if with_position:
        text += f", {'in the centre' if scene.position_name == 'centre' else 'at the ' + scene.position_name}"
    return text


def caption_tags(scene: Scene) -> str:
    """Booru-style tags: 'red_star, star, red, blue_background, large, top_left, simple_background'."""
    tags = [f"{scene.colour}_{scene.shape}", scene.shape, scene.colour, f"{scene.background}_background",
            scene.size, scene.position_name.replace(" ", "_")]
    tags.append(TEXTURE_TAGS[scene.texture] if scene.texture else "simple_background")
    return ", ".join(tags)


CAPTIONERS: dict[str, Callable[[Scene], str]] = {"tags": caption_tags, "sentence": caption_sentence}


def scene_rng(seed: int, index: int) -> random.Random:
    """The generator for image ``index`` of a data set with ``seed`` (independent of the other images)."""
    return random.Random(f"toy-world/{seed}/{index}")


def make_dataset(folder, n: int, seed: int = 0, style: str = "tags", filter: Callable[[Scene], bool] | None = None,
                 allow_held_out: bool = False, px: int = 64, max_tries: int = 10_000) -> list[Scene]:
    """Write ``n`` images ``00000.png`` ... with captions ``00000.txt`` (``style`` 'tags' or 'sentence') into
    ``folder``; only scenes that ``filter`` accepts. The same arguments give byte-identical files."""
    if style not in CAPTIONERS:
        raise ValueError(f"unknown caption style {style!r}; known: {', '.join(CAPTIONERS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(n):
        rng = scene_rng(seed, i)
        for _ in range(max_tries):
            scene = sample_scene(rng, allow_held_out=allow_held_out)
            if filter is None or filter(scene):
                break
        else:
            raise ValueError(f"the filter accepted none of {max_tries} scenes")
        render(scene, px).save(folder / f"{i:05d}.png", optimize=False)
        (folder / f"{i:05d}.txt").write_text(CAPTIONERS[style](scene) + "\n", encoding="utf-8")
        scenes.append(scene)
    return scenes


def make_tagger_demo(folder, n: int = 16, seed: int = 0) -> Path:
    """``n`` untagged pictures of the toy world (shapes on backgrounds, as its tagger knows them) in ``folder``, for a
    first try of the Tagger: any earlier captions there are removed, so the folder starts untagged."""
    folder = Path(folder)
    make_dataset(folder, n, seed=seed)
    for caption in folder.glob("*.txt"):
        caption.unlink()
    return folder
