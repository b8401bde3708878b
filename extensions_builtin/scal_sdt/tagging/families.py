"""How each family of ONNX tagger wants its input and names its tags: one small table, not one routine for all.

A family is recognised by the files in the model's folder. Each entry says how to prepare an image (as its authors
do) and how to read the tag list and categories.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

#: booru categories as WD14's selected_tags.csv numbers them
GENERAL, CHARACTER, RATING = 0, 4, 9

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """``layout`` NHWC or NCHW; ``bgr`` channel order; pixel value = (p / 255 * ``scale`` - mean) / std per channel
    (``scale`` 255 keeps 0-255); ``pad`` the colour the image is padded to a square with ('white' or 'edge');
    ``resample`` a PIL filter name."""
    layout: str = "NHWC"
    bgr: bool = True
    scale: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad: str = "white"
    resample: str = "BICUBIC"
    default_size: int = 448


@dataclass(frozen=True)
class Family:
    name: str
    tags_file: str
    preprocess: Preprocess
    outputs_logits: bool = False  # apply a sigmoid to the model's outputs
    note: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("wd14", "selected_tags.csv", Preprocess(),
           note="SmilingWolf's WD14 v1.4 / v2 / v3 and eva02-large: RGBA on white, white square pad, bicubic, BGR "
                "0-255 NHWC"),
    Family("deepdanbooru", "tags.txt", Preprocess(bgr=False, scale=1.0, pad="edge", resample="BOX", default_size=512),
           note="DeepDanbooru's project layout exported to ONNX: area resize, RGB 0-1 NHWC"),
    Family("tag-mapping", "tag_mapping.json", Preprocess(layout="NCHW", bgr=False, scale=2.0, mean=(1.0, 1.0, 1.0)),
           outputs_logits=True, note="ONNX exports with a tag_mapping.json (pixai, camie): RGB [-1, 1] NCHW"),
    Family("joytag", "top_tags.txt", Preprocess(layout="NCHW", bgr=False, scale=1.0, mean=CLIP_MEAN, std=CLIP_STD),
           outputs_logits=True, note="JoyTag: white square pad, bicubic, CLIP mean/std NCHW"),
)}


def detect_family(folder: Path) -> Family:
    """The family whose tag file is in ``folder``; the message lists what each family needs."""
    for family in FAMILIES.values():
        if (folder / family.tags_file).is_file():
            return family
    needs = "; ".join(f"{f.name}: {f.tags_file}" for f in FAMILIES.values())
    raise FileNotFoundError(f"{folder} has no tag list a tagger family uses ({needs})")


@dataclass
class Labels:
    names: list[str]
    categories: list[int]

    def indexes(self, category: int) -> list[int]:
        return [i for i, c in enumerate(self.categories) if c == category]


def read_labels(folder: Path, family: Family) -> Labels:
    path = folder / family.tags_file
    if family.name == "wd14":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "name" not in rows[0] or "category" not in rows[0]:
            raise ValueError(f"{path}: expected the columns tag_id,name,category,count")
        return Labels([r["name"] for r in rows], [int(r["category"]) for r in rows])
    if family.name == "tag-mapping":
        return _tag_mapping(path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    characters = set()
    if (folder / "tags-character.txt").is_file():  # DeepDanbooru's project layout
        characters = set((folder / "tags-character.txt").read_text(encoding="utf-8").split())
    categories = [RATING if n.startswith("rating:") else CHARACTER if n in characters else GENERAL for n in names]
    return Labels(names, categories)


_CATEGORY_WORDS = {"general": GENERAL, "character": CHARACTER, "rating": RATING, "0": GENERAL, "4": CHARACTER,
                   "9": RATING}


def _tag_mapping(path: Path) -> Labels:
    """``{"idx_to_tag": {"0": tag}, "tag_to_category": {tag: "general"}}`` (camie) or ``{"0": {"tag": t,
    "category": c}}`` / ``[{"tag": t, "category": c}]`` (pixai-style)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "idx_to_tag" in data:
        idx = data["idx_to_tag"]
        names = [idx[str(i)] for i in range(len(idx))]
        cats = data.get("tag_to_category", {})
        return Labels(names, [_CATEGORY_WORDS.get(str(cats.get(n, "general")).lower(), GENERAL) for n in names])
    items = [data[k] for k in sorted(data, key=int)] if isinstance(data, dict) else data
    try:
        names = [item["tag"] for item in items]
        return Labels(names, [_CATEGORY_WORDS.get(str(item.get("category", "general")).lower(), GENERAL)
                              for item in items])
    except (TypeError, KeyError):
        raise ValueError(f"{path}: expected idx_to_tag/tag_to_category or a list of {{tag, category}}") from None
