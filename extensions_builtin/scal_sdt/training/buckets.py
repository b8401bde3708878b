"""Aspect-ratio buckets, as kohya's sd-scripts make them, and the resize that fits an image to one.

Each bucket is a (width, height) whose sides are multiples of ``step`` and whose area is at most base². An image
goes to the bucket with the closest aspect ratio, is scaled to cover it and is cropped to it. Without buckets
every image goes to base×base the same way.
"""
from __future__ import annotations

import math
import random

from PIL import Image


def make_buckets(base_resolution: int, min_res: int, max_res: int, step: int = 64) -> list[tuple[int, int]]:
    """All (w, h) with sides in [min_res, max_res], multiples of ``step``, area <= base², as large as allowed.

    For each width the tallest height that fits is taken, in both orientations, plus the largest square.
    """
    for field, value in (("base_resolution", base_resolution), ("min_res", min_res), ("max_res", max_res)):
        if value < step:
            raise ValueError(f"{field} must be >= step ({step}), got {value}")
    for field, value in (("min_res", min_res), ("max_res", max_res)):
        if value % step:
            raise ValueError(f"{field} must be a multiple of step ({step}), got {value}")
    if not min_res <= min(base_resolution, max_res):
        raise ValueError(f"min_res ({min_res}) must be <= base_resolution ({base_resolution}) and max_res ({max_res})")
    max_area = base_resolution * base_resolution
    side = min(max_res, base_resolution // step * step)
    buckets = {(side, side)}
    for width in range(min_res, max_res + 1, step):
        height = min(max_res, max_area // width // step * step)
        if height >= min_res:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (compared as log ratios); ties go to the larger."""
    if not buckets:
        raise ValueError("no buckets to choose from")
    width, height = size
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def cover_crop(size: tuple[int, int], target: tuple[int, int], rng: random.Random | None = None):
    """For an image of ``size``: the scaled size that covers ``target`` and the crop box inside it.

    The crop is centred, or placed at random with ``rng``. Returns ``(scaled_size, (left, top, right, bottom))``.
    """
    (width, height), (tw, th) = size, target
    scale = max(tw / width, th / height)
    sw, sh = max(tw, round(width * scale)), max(th, round(height * scale))
    if rng is None:
        left, top = (sw - tw) // 2, (sh - th) // 2
    else:
        left, top = rng.randint(0, sw - tw), rng.randint(0, sh - th)
    return (sw, sh), (left, top, left + tw, top + th)


def resize_and_crop(image: Image.Image, target: tuple[int, int], rng: random.Random | None = None,
                    resample=Image.BICUBIC) -> Image.Image:
    """Scale ``image`` to cover ``target`` (w, h) and crop it to exactly that size."""
    scaled, box = cover_crop(image.size, target, rng)
    if scaled != image.size:
        image = image.resize(scaled, resample)
    return image.crop(box)
