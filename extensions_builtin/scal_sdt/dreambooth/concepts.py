"""The concepts of a DreamBooth (or LoRA) run: the flags' single one, or a JSON list (the DreamBooth extension's key
names are accepted too). Concepts take turns, one batch each; once any concept gives ``repeats``, each one's share of
the turns is its images × repeats (kohya's subsets, OneTrainer's concepts), and a concept's ``weight`` scales its loss."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import DreamBoothConfig

ALIASES = {"instance_data_dir": "instance_data", "class_data_dir": "class_data"}
KEYS = ("instance_data", "instance_prompt", "class_data", "class_prompt", "num_class_images", "weight", "repeats",
        "caption_extension")


@dataclass(frozen=True)
class Concept:
    instance_data: str
    instance_prompt: str = ""
    class_data: str = ""
    class_prompt: str = ""
    num_class_images: int = 50
    weight: float = 1.0  # its loss weight (its steps count this much)
    repeats: float | None = None  # how often its images are shown against the other concepts' (None: equal turns)
    caption_extension: str = ".txt"  # its captions: NAME<ext> beside each image

    @property
    def prior(self) -> bool:
        return bool(self.class_data)


def concepts_of(cfg: DreamBoothConfig) -> list[Concept]:
    if not cfg.concepts:
        return [Concept(cfg.instance_data or cfg.data, cfg.instance_prompt, cfg.class_data, cfg.class_prompt,
                        cfg.num_class_images)]
    path = Path(cfg.concepts)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"concepts: cannot read {path}: {e}") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"concepts: {path} must hold a non-empty JSON list of concepts")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"concepts: entry {i} of {path} is not an object")
        entry = {ALIASES.get(k, k): v for k, v in entry.items()}
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise ValueError(f"concepts: entry {i} of {path} has unknown keys {unknown}; known: {', '.join(KEYS)}")
        if not entry.get("instance_data"):
            raise ValueError(f"concepts: entry {i} of {path} has no instance_data")
        if entry.get("class_data") and not entry.get("class_prompt"):
            raise ValueError(f"concepts: entry {i} of {path} has class_data but no class_prompt")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"concepts: entry {i} of {path} has weight {weight!r}; give a number >= 0")
        repeats = entry.get("repeats")
        if repeats is not None and (not isinstance(repeats, (int, float)) or isinstance(repeats, bool) or repeats <= 0):
            raise ValueError(f"concepts: entry {i} of {path} has repeats {repeats!r}; give a number > 0")
        ext = entry.get("caption_extension", ".txt")
        if not isinstance(ext, str) or not ext.startswith(".") or len(ext) < 2:
            raise ValueError(f"concepts: entry {i} of {path} has caption_extension {ext!r}; give one like '.txt'")
        out.append(Concept(**{**{"num_class_images": cfg.num_class_images}, **entry}))
    return out


def turn_shares(views: list[float] | None) -> list[float] | None:
    """Each concept's share of the turns from its views per epoch (images × repeats); None: equal turns."""
    if views is None:
        return None
    total = sum(views)
    if total <= 0:
        return None
    return [v / total for v in views]


def next_turn(shares: list[float] | None, taken: list[int], turn: int) -> int:
    """The concept whose turn ``turn`` (0-based) is: in order without shares; else the one furthest behind its
    share (ties: the first), so that after any number of turns each concept has had its share within one."""
    if shares is None:
        return turn % len(taken)
    return max(range(len(shares)), key=lambda i: (shares[i] * (turn + 1) - taken[i], -i))
