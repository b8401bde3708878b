"""A run's saved steps: the files each method writes every ``save_every`` steps into its run folder, and its final
result, each with the step it was saved at."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

#: per method: the run folder's sub-folder of saved steps, and the suffix of the final result
FOLDERS = {"embedding": "embeddings", "hypernetwork": "hypernetworks", "lora": "lora", "dreambooth": "models"}


@dataclass(frozen=True)
class SavedStep:
    step: int
    path: Path  # the embedding, hypernetwork, LoRA or checkpoint file
    embedding: Path | None = None  # DreamBooth's pivotal embedding saved with it
    final: bool = False  # the run's result itself (already under the result's name)


def last_logged_step(run_dir: Path) -> int | None:
    """The last step of the run's loss log (the step its final result was saved at)."""
    try:
        with open(Path(run_dir) / "loss.csv", newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]
    except OSError:
        return None
    return int(rows[-1]["step"]) if rows else None


def result_path(method: str, cfg: dict) -> Path:
    """Where the run's final result is (what "keep this one" overwrites)."""
    name, out = cfg["name"], Path(cfg["out"])
    if method == "embedding":
        return out / f"{name}.{cfg.get('format', 'safetensors')}"
    if method == "hypernetwork":
        return out / f"{name}.pt"
    return out / f"{name}.safetensors"


def saved_steps(run_dir: Path, method: str, cfg: dict) -> list[SavedStep]:
    """Every saved step of the run, oldest first, and the final result as its last step (when it is not saved there
    too)."""
    name = cfg["name"]
    folder = Path(run_dir) / FOLDERS[method]
    pattern = re.compile(re.escape(name) + r"-(\d+)$")
    found: dict[int, SavedStep] = {}
    for path in sorted(folder.glob(f"{name}-*")) if folder.is_dir() else []:
        match = pattern.match(path.stem)
        if not match or path.name.startswith("."):
            continue
        step = int(match.group(1))
        if method == "dreambooth" and path.suffix != ".safetensors":
            continue  # its .json and .yaml
        emb = Path(run_dir) / "embeddings" / f"{name}-{step}.safetensors"
        found[step] = SavedStep(step, path, emb if method == "dreambooth" and emb.is_file() else None)
    final, last = result_path(method, cfg), last_logged_step(run_dir)
    if final.is_file() and last is not None and last not in found:
        emb = Path(cfg.get("embeddings_out", "")) / f"{name}.safetensors"
        found[last] = SavedStep(last, final, emb if method == "dreambooth" and emb.is_file() else None, final=True)
    return [found[s] for s in sorted(found)]
