"""Several datasets at once (kohya's subsets, OneTrainer's concepts) as our concepts JSON: one entry a folder, with
its repeats, caption extension, prompt, loss weight and class images (dreambooth/concepts.py reads it). The file
goes beside the imported config; a single plain folder stays the config's own data option."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..training.images import scan_folder

SUFFIX = ".concepts.json"


def count_images(folder: str) -> int:
    """Images in ``folder`` (kohya's N_name sub-folders counted N times, as our loader counts them); 0 when it is
    not here to count."""
    path = Path(folder)
    if not path.is_dir():
        return 0
    try:
        return sum(item.repeats for item in scan_folder(path).items)
    except (OSError, ValueError):
        return 0


@dataclass
class Concepts:
    """The concepts found so far, in the file's order."""
    entries: list[dict] = field(default_factory=list)

    def add(self, folder: str, **keys) -> int:
        """A concept of ``folder``; returns its index (concepts[i] in the report)."""
        self.entries.append({"instance_data": folder, **{k: v for k, v in keys.items() if v is not None}})
        return len(self.entries) - 1

    def needed(self) -> bool:
        """More than one concept, or one with a key the config's own options cannot say (repeats against nothing
        need no file; another caption extension does)."""
        return len(self.entries) > 1 or any(e.get("caption_extension", ".txt") != ".txt" for e in self.entries)

    def views(self) -> int:
        """Images × repeats of every concept: one epoch, for epochs -> steps."""
        return round(sum(count_images(e["instance_data"]) * float(e.get("repeats", 1)) for e in self.entries))

    def write(self, path: Path) -> Path:
        from ..files import atomic_write_text

        atomic_write_text(path, json.dumps(self.entries, indent=2) + "\n")
        return path


def concepts_path_for(config_path: Path) -> Path:
    """``mychar.scal-sdt.toml`` -> ``mychar.scal-sdt.concepts.json`` beside it."""
    return config_path.with_name(config_path.stem + SUFFIX)


class ConceptTarget:
    """For an importer (``set``, ``report``, ``command``, ``ours``): a concept's keys go into the concepts JSON
    when ``multi`` (several concepts), else into the config's own options (``data`` / ``instance_data``...)."""
    concepts: Concepts
    multi: bool = False

    def to_concept(self, name: str, value, index: int | None, status: str, how: str = "", **keys) -> None:
        """``index`` None: every concept (the class images kohya mixes into all of them)."""
        if not self.multi:
            data_key = "data" if self.command == "train-embedding" else "instance_data"
            return self.set(name, value, status, how, **{data_key if k == "instance_data" else k: v
                                                         for k, v in keys.items()})
        for i, entry in enumerate(self.concepts.entries):
            if index is None or i == index:
                entry.update(keys)
        where = "*" if index is None else str(index)
        self.report.add(name, value, status, {f"concepts[{where}].{k}": v for k, v in keys.items()}, how)
