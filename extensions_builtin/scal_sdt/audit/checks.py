"""The checks of a data set audit, each a function over what the folder scan found: duplicates and near duplicates
(tagging's finder), corrupt and tiny images, the aspect buckets, long and missing captions, tag frequencies, the
trigger word, and the repeats and steps to train with. Nothing here writes a file."""
from __future__ import annotations

import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..tagging.duplicates import dhash, groups
from ..tagging.preprocess import content_hash
from ..tagging.tags import norm, split_list
from ..training.buckets import assign_bucket, make_buckets
from ..training.dataset import bucket_range
from ..training.images import ImageItem

#: the kinds of problem an audit reports, in the order it lists them
PROBLEMS = ("corrupt", "duplicate", "near-duplicate", "tiny", "no caption", "long caption", "missing trigger",
            "inconsistent trigger", "skipped")


@dataclass
class Finding:
    kind: str  # one of PROBLEMS
    paths: list[str]
    detail: str = ""


@dataclass
class Suggestion:
    repeats: int
    steps: int
    reason: str


#: near duplicates must also look alike in colour: a mean difference of 16x16 colour thumbnails under this (0-255);
#: the difference hash alone, a grey gradient, calls two pictures on the same plain background alike
THUMB_LIMIT = 12.0


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BOX), dtype=np.float32)


def _alike(group: list[str], thumbs: dict[str, np.ndarray]) -> list[list[str]]:
    """``group`` split into the sets whose pictures also look alike in colour (transitively)."""
    out: list[list[str]] = []
    for path in group:
        joined = [g for g in out if any(np.abs(thumbs[path] - thumbs[q]).mean() <= THUMB_LIMIT for q in g)]
        merged = [path] + [q for g in joined for q in g]
        out = [g for g in out if g not in joined] + [merged]
    return [g for g in out if len(g) > 1]


def duplicate_findings(items: list[ImageItem], near_distance: int) -> list[Finding]:
    """Groups of the same bytes ("duplicate") or nearly the same picture ("near-duplicate"): tagging's finder,
    confirmed by colour thumbnails; the largest image of a group first (the one to keep)."""
    keyed, digests, sizes, thumbs = [], {}, {}, {}
    for item in items:
        data = item.path.read_bytes()
        key = str(item.path)
        with Image.open(io.BytesIO(data)) as im:
            keyed.append((key, content_hash(data), dhash(im)))
            thumbs[key] = _thumb(im)
        digests[key] = keyed[-1][1]
        sizes[key] = item.size[0] * item.size[1]
    out = []
    for found in groups(sorted(keyed), near_distance):
        for group in _alike(found, thumbs) if len({digests[p] for p in found}) > 1 else [found]:
            group = sorted(group, key=lambda p: (-sizes[p], p))
            exact = len({digests[p] for p in group}) == 1
            out.append(Finding("duplicate" if exact else "near-duplicate", group,
                               "the same file content" if exact else "nearly the same picture (resized, re-encoded "
                               "or lightly edited); keep the first"))
    return out


def tiny_findings(items: list[ImageItem], min_side: int) -> list[Finding]:
    small = [i for i in items if min(i.size) < min_side]
    return [Finding("tiny", [str(i.path)], f"{i.size[0]}x{i.size[1]}, shorter side under {min_side} px: upscaled, "
                    f"it trains blur") for i in small]


def bucket_histogram(items: list[ImageItem], resolution: int) -> Counter:
    """How many images fall into each aspect bucket (kohya's buckets at ``resolution``), as "WxH" -> count."""
    buckets = make_buckets(resolution, *bucket_range(resolution))
    return Counter(f"{w}x{h}" for w, h in (assign_bucket(i.size, buckets) for i in items))


def has_caption_file(item: ImageItem) -> bool:
    return item.path.with_suffix(".txt").is_file()


def caption_findings(items: list[ImageItem], lengths: list[int], max_tokens: int) -> list[Finding]:
    out = [Finding("no caption", [str(i.path)], "no caption file (the file name is used)" if not has_caption_file(i)
                   else "the caption file is empty") for i in items if not has_caption_file(i) or not i.caption]
    out += [Finding("long caption", [str(i.path)], f"{n} tokens, more than {max_tokens}: the text encoder reads "
                    f"{max_tokens} at a time, so what spans two chunks loses its context")
            for i, n in zip(items, lengths) if n > max_tokens]
    return out


def tag_counts(captions: list[str]) -> Counter:
    """In how many captions each comma-separated tag occurs."""
    return Counter(t for c in captions for t in dict.fromkeys(split_list(c)))


def infer_trigger(captions: list[str]) -> tuple[str, str]:
    """The trigger word the captions seem to use, and how it was found ('' when none stands out): ``[name]`` when
    a caption holds it (the trainer fills it in), else the first tag that most captions start with."""
    if any("[name]" in c for c in captions):
        return "[name]", "captions use [name]"
    firsts = Counter(norm(split_list(c)[0]) for c in captions if split_list(c))
    if not firsts:
        return "", ""
    first, n = firsts.most_common(1)[0]
    tagged = sum(len(split_list(c)) > 1 for c in captions)  # tag lists, not sentences
    if n >= 2 and n * 2 >= len(captions) and tagged * 2 >= len(captions):
        spelled = Counter(split_list(c)[0] for c in captions if split_list(c) and norm(split_list(c)[0]) == first)
        return spelled.most_common(1)[0][0], f"the first tag of {n} of {len(captions)} captions"
    return "", ""


def trigger_findings(items: list[ImageItem], trigger: str) -> list[Finding]:
    """Captions without the trigger ("missing trigger") or with it spelled otherwise ("inconsistent trigger":
    another case, underscores for spaces)."""
    if not trigger:
        return []
    exact = re.compile(r"(?<![\w\[])" + re.escape(trigger) + r"(?![\w\]])")
    spelled = "".join("[ _]" if ch in " _" else re.escape(ch) for ch in trigger)
    loose = re.compile(r"(?<![\w\[])" + spelled + r"(?![\w\]])", re.IGNORECASE)
    out = []
    for item in items:
        if exact.search(item.caption):
            continue
        variant = loose.search(item.caption)
        if variant:
            out.append(Finding("inconsistent trigger", [str(item.path)],
                               f"spelled {variant.group(0)!r}, not {trigger!r}"))
        else:
            out.append(Finding("missing trigger", [str(item.path)], f"the caption lacks {trigger!r}"))
    return out


#: per method: how often training should see each image, the range of steps the usual guides give, and why
PLANS = {
    "embedding": (150, 1000, 3000, "Textual Inversion learns a few vectors: about 150 views of each image, "
                  "1000-3000 steps"),
    "hypernetwork": (300, 2000, 10000, "a hypernetwork learns slowly at its small rates: about 300 views of each "
                     "image, 2000-10000 steps"),
    "dreambooth": (100, 400, 2000, "DreamBooth: about 100 steps per instance image (the diffusers guide), more "
                   "overfits"),
    "lora": (100, 500, 3000, "LoRA: about 100 views of each image (kohya's guides: repeats x images near 100-200 a "
             "pass, about 10 passes)"),
}


def suggest(method: str, items: list[ImageItem], batch_size: int) -> Suggestion:
    """Repeats (kohya's N_ folder prefix; 1 for methods that do not use them) and steps for ``method``."""
    views, lo, hi, why = PLANS[method]
    n = sum(i.repeats for i in items) or 1
    images = len(items) or 1
    repeats = max(1, round(150 / images)) if method in ("lora", "dreambooth") else 1
    steps = min(hi, max(lo, math.ceil(images * views / batch_size / 50) * 50))
    now = f"; the folder now counts {n} image views a pass" if n != images else ""
    return Suggestion(repeats, steps, f"{why}: {images} image(s) at batch {batch_size}{now}")


@dataclass
class Scan:
    """What the audit read: usable images, unreadable files (path, reason) and each caption's token count."""

    items: list[ImageItem]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def read_findings(skipped: list[tuple[Path, str]]) -> list[Finding]:
    return [Finding("corrupt" if reason.startswith("unreadable image") else "skipped", [str(path)], reason)
            for path, reason in skipped]
