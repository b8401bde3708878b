"""From a tagger's scores to a caption: thresholds or MCut per category, rating, exclusions, replacements, order,
underscores, escaping, weights, and merging with a caption the image already has."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .families import CHARACTER, GENERAL, RATING, Labels

#: tags written with underscores on purpose (faces), kept as they are (SmilingWolf's list)
KAOMOJIS = frozenset(["0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
                      "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"])
EXISTING = ("ignore", "overwrite", "append", "prepend")
SORTS = ("confidence", "alphabetical")
#: MCut's lower bound for character tags, as the authors' demo uses it
CHARACTER_MCUT_FLOOR = 0.15


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut (Largeron et al. 2012): the middle of the largest gap between sorted scores."""
    if len(probs) < 2:
        return 1.0
    s = np.sort(probs)[::-1]
    t = int(np.argmax(s[:-1] - s[1:]))
    return float((s[t] + s[t + 1]) / 2)


def norm(tag: str) -> str:
    """How tags are compared: case, spaces/underscores and escapes do not matter."""
    return tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ").strip().lower()


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass
class TagRules:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    mcut_general: bool = False
    mcut_character: bool = False
    rating: bool = False
    exclude: list[str] = field(default_factory=list)
    exclude_regex: str = ""
    add: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    replace: dict[str, str] = field(default_factory=dict)
    underscores_to_spaces: bool = True
    escape_brackets: bool = True
    sort: str = "confidence"
    weights: bool = False

    def __post_init__(self):
        if self.exclude_regex:
            try:
                re.compile(self.exclude_regex)
            except re.error as e:
                raise ValueError(f"exclude_regex {self.exclude_regex!r} is not a regular expression: {e}") from None


def parse_replace(text: str) -> dict[str, str]:
    """``old=new, old2=new2`` (an empty ``new`` removes the tag)."""
    out = {}
    for item in split_list(text):
        if "=" not in item:
            raise ValueError(f"replace: {item!r} should be old=new")
        old, new = item.split("=", 1)
        out[norm(old)] = new.strip()
    return out


def select(scores: np.ndarray, labels: Labels, rules: TagRules) -> dict[str, float]:
    """The chosen tags with their scores, rating first (when asked), then characters, then general tags."""
    out: dict[str, float] = {}
    if rules.rating:
        idx = labels.indexes(RATING)
        if idx:
            best = max(idx, key=lambda i: scores[i])
            out[labels.names[best]] = float(scores[best])
    for category, threshold, mcut in ((CHARACTER, rules.character_threshold, rules.mcut_character),
                                      (GENERAL, rules.general_threshold, rules.mcut_general)):
        idx = np.asarray(labels.indexes(category), dtype=int)
        if not len(idx):
            continue
        p = scores[idx]
        if mcut:
            threshold = mcut_threshold(p)
            if category == CHARACTER:
                threshold = max(CHARACTER_MCUT_FLOOR, threshold)
        chosen = idx[p >= threshold]
        order = sorted(chosen, key=lambda i: -scores[i]) if rules.sort == "confidence" else \
            sorted(chosen, key=lambda i: labels.names[i])
        for i in order:
            out[labels.names[i]] = float(scores[i])
    return out


def combine(results: list[dict[str, float]], how: str) -> dict[str, float]:
    """An ensemble's tags: ``union`` keeps a tag any model chose (its best score), ``intersection`` those every
    model chose (its lowest score); the first model's order first."""
    if len(results) == 1:
        return results[0]
    merged: dict[str, float] = {}
    for r in results:
        for tag, s in r.items():
            merged[tag] = max(merged.get(tag, 0.0), s)
    if how == "intersection":
        keep = set.intersection(*(set(r) for r in results))
        merged = {t: min(r[t] for r in results) for t in merged if t in keep}
    return merged


def format_tag(tag: str, rules: TagRules) -> str:
    if rules.underscores_to_spaces and tag not in KAOMOJIS:
        tag = tag.replace("_", " ")
    if rules.escape_brackets:
        tag = re.sub(r"(?<!\\)([()])", r"\\\1", tag)
    return tag


def caption_tags(chosen: dict[str, float], rules: TagRules, extra: list[str] = ()) -> list[str]:
    """The caption's tags in order, after replacement, exclusion, added and first tags, formatting and weights.
    ``extra`` (CLIP terms) come after the tagger's tags, without weights."""
    excluded = {norm(t) for t in rules.exclude}
    pattern = re.compile(rules.exclude_regex) if rules.exclude_regex else None
    items: list[tuple[str, float | None]] = [(t, None) for t in rules.add]
    for tag, score in chosen.items():
        tag = rules.replace.get(norm(tag), tag)
        if not tag or norm(tag) in excluded or (pattern and (pattern.search(tag) or pattern.search(norm(tag)))):
            continue
        items.append((tag, score))
    items += [(term, None) for term in extra]
    first = [norm(t) for t in rules.first]
    items.sort(key=lambda it: first.index(norm(it[0])) if norm(it[0]) in first else len(first))  # stable
    out, seen = [], set()
    for tag, score in items:
        if norm(tag) in seen:
            continue
        seen.add(norm(tag))
        text = format_tag(tag, rules)
        out.append(f"({text}:{score:.2f})" if rules.weights and score is not None else text)
    return out


def merge_caption(existing: str, new: list[str], mode: str) -> str:
    """The caption to write: ``overwrite`` the new tags; ``append``/``prepend`` them after/before the existing ones
    without repeating a tag; ``ignore`` keeps the existing caption."""
    old = split_list(existing)
    if mode == "ignore" and old:
        return existing
    if mode == "overwrite" or not old:
        parts = new
    elif mode == "append":
        parts = old + new
    else:
        parts = new + old
    out, seen = [], set()
    for tag in parts:
        key = norm(re.sub(r"^\((.*):[\d.]+\)$", r"\1", tag))
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return ", ".join(out)
