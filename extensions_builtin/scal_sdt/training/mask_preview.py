"""What the loss sees: each image with its loss weight drawn over it, and a contact sheet of them for a run.

The weight comes from the same place the dataset takes it: ``NAME_mask.png`` beside the image, else (with
``alpha_as_weight``) the PNG's alpha. Where the weight is 0 the image is blended towards a dark red, where it is
full the pixels are left exactly as they are, and in between the blend follows the weight. The dataset scales each
weight map to mean 1, so only a pixel's weight relative to the image's highest weight matters; that is what is drawn.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .images import ImageItem, load_image, load_mask

TINT = (120, 0, 0)  # a dark red: masked-out areas get darker and redder
TINT_STRENGTH = 0.65  # at weight 0 a pixel is 65 % tint and 35 % image, so the picture stays legible
GAP = 2  # pixels between the cells of the contact sheet
SHEET_NAME = "masks.png"


def loss_weight(image_path, mask_path, alpha_as_weight: bool) -> tuple[Image.Image, Image.Image | None]:
    """The RGB image and its weight as an "L" image of the same size (None when the image has no weight)."""
    image, weight = load_image(image_path, alpha_as_weight)
    if mask_path is not None:
        weight = load_mask(mask_path, image.size)
    return image, weight


def overlay(image: Image.Image, weight: Image.Image | None) -> Image.Image:
    """``image`` with ``weight`` (same size, "L") drawn over it; unchanged where the relative weight is 1."""
    if weight is None:
        return image.copy()
    w = np.asarray(weight, dtype=np.float32)
    top = float(w.max())
    relative = w / top if top > 0 else np.zeros_like(w)  # all zero: the whole image is masked out (and skipped)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    masked = rgb * (1 - TINT_STRENGTH) + np.asarray(TINT, dtype=np.float32) * TINT_STRENGTH
    r = relative[..., None]
    out = rgb * r + masked * (1 - r)  # r = 1 gives rgb exactly: kept pixels are untouched
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def mask_preview(image_path, mask_path, alpha_as_weight: bool, size: int) -> Image.Image:
    """The image at ``mask_path``'s weight (or its alpha, with ``alpha_as_weight``), its longer side ``size`` px."""
    if size < 1:
        raise ValueError(f"size must be ≥ 1, got {size}")
    image, weight = loss_weight(image_path, mask_path, alpha_as_weight)
    scale = size / max(image.size)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(fitted, Image.BICUBIC)
    if weight is not None:
        weight = weight.resize(fitted, Image.BILINEAR)
    return overlay(image, weight)


def has_weight(item: ImageItem, alpha_as_weight: bool) -> bool:
    """Whether the loss weight of ``item`` is not uniform (or is zero everywhere): a uniform weight changes nothing.

    Only the file headers are read for images without a mask, so a folder without weights costs almost nothing.
    """
    if item.mask_path is None:
        if not alpha_as_weight:
            return False
        with Image.open(item.path) as im:
            if "A" not in im.getbands() and "transparency" not in im.info:
                return False
    _, weight = loss_weight(item.path, item.mask_path, alpha_as_weight)
    if weight is None:
        return False
    low, high = weight.getextrema()
    return low < high or high == 0


def contact_sheet(previews: Sequence[Image.Image], cell: int) -> Image.Image:
    """The previews centred in ``cell``-px squares on a near-square grid, ``GAP`` px apart on dark grey."""
    columns = math.ceil(math.sqrt(len(previews)))
    rows = math.ceil(len(previews) / columns)
    sheet = Image.new("RGB", (columns * cell + (columns - 1) * GAP, rows * cell + (rows - 1) * GAP), (32, 32, 32))
    for i, preview in enumerate(previews):
        x, y = (i % columns) * (cell + GAP), (i // columns) * (cell + GAP)
        sheet.paste(preview, (x + (cell - preview.width) // 2, y + (cell - preview.height) // 2))
    return sheet


def write_mask_previews(items: Sequence[ImageItem], out_dir, alpha_as_weight: bool, limit: int = 16,
                        size: int = 128) -> list[Path]:
    """Write ``out_dir/masks.png``: up to ``limit`` previews of the images that have a loss weight.

    Returns ``[path]``, or ``[]`` (and writes nothing) when no image has one. An image that cannot be read is left
    out; the dataset reports it.
    """
    previews = []
    for item in items:
        if len(previews) >= limit:
            break
        try:
            if has_weight(item, alpha_as_weight):
                previews.append(mask_preview(item.path, item.mask_path, alpha_as_weight, size))
        except (OSError, ValueError):
            continue
    if not previews:
        return []
    path = Path(out_dir) / SHEET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(previews, size).save(path)
    return [path]
