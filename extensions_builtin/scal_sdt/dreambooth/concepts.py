"""The concepts of a DreamBooth run: the flags' single one, or a JSON list (the DreamBooth extension's key names are
accepted too)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import DreamBoothConfig

ALIASES = {"instance_data_dir": "instance_data", "class_data_dir": "class_data"}
KEYS = ("instance_data", "instance_prompt", "class_data", "class_prompt", "num_class_images", "weight")


@dataclass(frozen=True)
class Concept:
    instance_data: str
    instance_prompt: str = ""
    class_data: str = ""
    class_prompt: str = ""
    num_class_images: int = 50
    weight: float = 1.0  # its loss weight (its steps count this much)

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
        out.append(Concept(**{**{"num_class_images": cfg.num_class_images}, **entry}))
    return out
