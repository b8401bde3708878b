"""Turn an image into a tagger's input row, exactly as the family's authors do (see :mod:`.families`)."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .families import Preprocess


def on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (RGBA, LA, P with a transparent colour)."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _pad_white_then_resize(image: Image.Image, side: int, resample: int) -> Image.Image:
    w, h = image.size
    m = max(w, h)
    square = Image.new("RGB", (m, m), (255, 255, 255))
    square.paste(image, ((m - w) // 2, (m - h) // 2))
    return square if m == side else square.resize((side, side), resample)


def _resize_then_pad_edge(image: Image.Image, side: int, resample: int) -> np.ndarray:
    w, h = image.size
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    a = np.asarray(image.resize((nw, nh), resample) if (nw, nh) != (w, h) else image)
    top, left = (side - nh) // 2, (side - nw) // 2
    return np.pad(a, ((top, side - nh - top), (left, side - nw - left), (0, 0)), mode="edge")


def prepare(image: Image.Image, side: int, pre: Preprocess) -> np.ndarray:
    """One input row (HWC or CHW float32) of ``side`` x ``side``."""
    image = on_white(image)
    resample = getattr(Image.Resampling, pre.resample)
    if pre.pad == "edge":
        a = _resize_then_pad_edge(image, side, resample).astype(np.float32)
    else:
        a = np.asarray(_pad_white_then_resize(image, side, resample), dtype=np.float32)
    if pre.bgr:
        a = a[:, :, ::-1]
    if pre.scale != 255.0 or any(pre.mean) or any(s != 1.0 for s in pre.std):
        a = (a / 255.0 * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == "NCHW":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, dtype=np.float32)


@dataclass
class Loaded:
    """An image file read for tagging: its content hash, one input row per model (None where that model's scores
    are cached), or why it could not be read."""
    path: Path
    digest: str
    rows: list[np.ndarray | None] = field(default_factory=list)
    error: str | None = None


def content_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


#: a model's way to make its input row from an image, and whether its result for a content hash is cached
Spec = tuple[Callable[[Image.Image], np.ndarray], Callable[[str], bool]]


def load(path: Path, specs: list[Spec]) -> Loaded:
    """Read and hash one file, then make a row for each model spec whose result for this content is not cached.
    A corrupt or unreadable file gives ``error`` and never raises."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return Loaded(path, "", error=f"cannot read: {e.strerror or e}")
    digest = content_hash(data)
    needed = [not is_cached(digest) for _, is_cached in specs]
    if not any(needed):
        return Loaded(path, digest, [None] * len(specs))
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rows = [make(im) if need else None for (make, _), need in zip(specs, needed)]
        return Loaded(path, digest, rows)
    except UnidentifiedImageError:
        return Loaded(path, digest, error="not an image file (unknown or damaged format)")
    except Exception as e:  # PIL raises many kinds for a truncated or broken file
        return Loaded(path, digest, error=f"damaged image ({type(e).__name__}: {e})")
