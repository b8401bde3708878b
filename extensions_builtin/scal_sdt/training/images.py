"""The image folder: which files are training images, their captions, repeats and masks, and how to read one.

Layout, as the WebUI and kohya's sd-scripts read it:

- Any ``.png/.jpg/.jpeg/.webp/.bmp`` under the root, recursively (hidden files and folders are ignored).
- A sub-folder named ``N_name`` (kohya, e.g. ``10_mychar``) makes each image under it count ``N`` times per epoch.
- The caption is the UTF-8 ``.txt`` beside the image, else derived from the file name as the WebUI does.
- ``NAME_mask.png`` (or DreamArtist's ``NAME_att.png``) beside ``NAME.<ext>`` is that image's loss-weight mask
  (greyscale, white = full weight; ``--mask-weights lo-hi`` maps 0..1 to another range).

Every image is fully decoded while scanning; one that cannot be is listed in ``skipped`` with the reason.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
MASK_SUFFIX = "_mask"
MASK_SUFFIXES = (MASK_SUFFIX, "_att")  # _att: DreamArtist's name for its attention map

# The WebUI strips a leading run of digits and dashes ("00012-0-") from file names (dataset.py).
RE_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")
# kohya: "10_mychar" -> each image in it counts 10 times.
RE_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int
    mask_path: Path | None
    size: tuple[int, int]  # (width, height) after EXIF orientation
    weight: float = 1.0  # the loss weight of its folder (--folder-weights) or concept


@dataclass
class ScanResult:
    items: list[ImageItem] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def caption_from_filename(stem: str, word_regex: str = "", join_string: str = " ") -> str:
    """The WebUI's filewords for an image without a caption file.

    The leading number prefix is removed. With a ``word_regex`` (the WebUI setting "Filename word regex", empty by
    default) the words it finds are joined with ``join_string`` (setting "Filename join string", default a space);
    e.g. ``word_regex=r"[^_]+"`` turns underscores into spaces.
    """
    text = RE_NUMBERS_AT_START.sub("", stem)
    if word_regex:
        text = join_string.join(re.findall(word_regex, text))
    return text


def folder_weight(image: Path, root: Path, weights: dict[str, float]) -> float:
    """The loss weight of the nearest folder between ``root`` (excluded) and the image that ``weights`` names,
    by its whole name (``10_mychar``) or, for a kohya ``N_name`` folder, by its name alone (``mychar``); 1 if none."""
    for folder in image.relative_to(root).parents:
        if not folder.name:
            continue
        match = RE_REPEAT_FOLDER.match(folder.name)
        for key in (folder.name, match.group(2) if match else None):
            if key in weights:
                return weights[key]
    return 1.0


def folder_repeats(image: Path, root: Path) -> int:
    """Repeats from the nearest ``N_name`` folder between ``root`` (excluded) and the image; 1 when none."""
    for folder in image.relative_to(root).parents:
        match = RE_REPEAT_FOLDER.match(folder.name)
        if match:
            return int(match.group(1))
    return 1


def image_size(path: Path) -> tuple[int, int]:
    """Decode the whole file and return its (width, height) after EXIF orientation. Raises on any problem."""
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    with Image.open(path) as im:
        im.load()  # verify() misses truncated data; a full decode does not
        im = ImageOps.exif_transpose(im)
        width, height = im.size
    if width == 0 or height == 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    return width, height


def read_caption(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def scan_folder(root, caption_ext: str = ".txt", *, word_regex: str = "", join_string: str = " ") -> ScanResult:
    """List the usable images under ``root``; never raises for a bad file, which goes to ``skipped`` instead."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset folder does not exist: {root}")
    result = ScanResult()
    files = sorted(_walk(root))
    image_stems = {p.with_suffix("") for p in files if p.suffix.lower() in IMAGE_EXTS}
    for path in files:
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        suffix = next((m for m in MASK_SUFFIXES if path.stem.endswith(m)), None)
        if suffix and path.suffix.lower() == ".png":
            owner = path.with_name(path.stem[: -len(suffix)])
            if owner not in image_stems:
                result.skipped.append((path, "mask with no image beside it"))
            continue
        item, reason = _scan_image(path, root, caption_ext, word_regex, join_string)
        if item is None:
            result.skipped.append((path, reason))
        else:
            result.items.append(item)
    return result


def image_files(root, recursive: bool = True) -> list[Path]:
    """The images under ``root`` in sorted order (not masks, hidden files or hidden folders)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"folder does not exist: {root}")
    files = _walk(root) if recursive else (p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTS
                  and not (p.stem.endswith(MASK_SUFFIXES) and p.suffix.lower() == ".png"))


def _walk(root: Path):
    seen = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                yield Path(folder) / name


def _scan_image(path: Path, root: Path, caption_ext: str, word_regex: str, join_string: str):
    repeats = folder_repeats(path, root)
    if repeats < 1:
        return None, "its folder sets 0 repeats"
    try:
        size = image_size(path)
    except Exception as e:  # noqa: BLE001 - any decoder error means "unusable image"
        return None, f"unreadable image ({type(e).__name__}: {e})"

    caption_path = path.with_suffix(caption_ext)
    if caption_path.is_file():
        try:
            caption = read_caption(caption_path)
        except (OSError, UnicodeDecodeError) as e:
            return None, f"caption {caption_path.name} unreadable ({type(e).__name__}: {e})"
    else:
        caption = caption_from_filename(path.stem, word_regex, join_string)

    mask_path = next((m for m in (path.with_name(path.stem + x + ".png") for x in MASK_SUFFIXES) if m.is_file()),
                     None)
    if mask_path is not None:
        try:
            image_size(mask_path)
        except Exception as e:  # noqa: BLE001
            return None, f"mask {mask_path.name} unreadable ({type(e).__name__}: {e})"
    return ImageItem(path, caption, repeats, mask_path, size), ""


def load_image(path, alpha_as_weight: bool = False) -> tuple[Image.Image, Image.Image | None]:
    """An RGB image and, when asked and the image has transparency, its alpha as an "L" weight map.

    EXIF orientation is applied. Transparent pixels are composited on white, unless the alpha becomes the weight,
    in which case the colours are kept as they are, like the WebUI's "use PNG alpha channel as loss weight".
    """
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if "A" not in im.getbands():
        return im.convert("RGB"), None
    im = im.convert("RGBA")
    alpha = im.getchannel("A")
    if alpha_as_weight:
        return im.convert("RGB"), alpha
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im).convert("RGB"), None


def load_mask(path, size: tuple[int, int]) -> Image.Image:
    """A mask file as an "L" image of the given (width, height)."""
    with Image.open(path) as im:
        im.load()
        mask = ImageOps.exif_transpose(im).convert("L")
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.BILINEAR)
    return mask


def to_array(weight: Image.Image) -> np.ndarray:
    """An "L" image as float32 in [0, 1]."""
    return np.asarray(weight, dtype=np.float32) / 255.0
