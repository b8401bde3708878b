"""The parameters of `scal-sdt evaluate`: the one source for the CLI, the training tab's Evaluate button and the
API."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, mention, option


def number_list(text: str, what: str) -> list[float]:
    """``"0.5, 1"`` -> [0.5, 1.0]."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{what} {text!r}: give comma-separated numbers, e.g. 0.5,1") from None
    if not values:
        raise ValueError(f"{what}: give at least one number")
    return values


@dataclass(kw_only=True)
class EvaluateConfig:
    run_dir: str = option(help="the run's log folder (scal-sdt-runs/NAME): its saved steps are compared",
                          positional=True, folder=True)
    prompts: str = option("", "prompts of the grid, several separated by '|'; [name] is the trained name; '' = the "
                          "run's preview prompts")
    class_prompt: str = option("", "a prompt WITHOUT the trigger, for leakage (how far the class moves from the "
                               "base model's); '' = the run's class prompt, else the prompts with [name] left out")
    strengths: str = option("1", "strengths to compare, comma-separated (LoRA, hypernetwork; an embedding and a "
                            "DreamBooth checkpoint have none)")
    aesthetic: str = option("", "an aesthetic embedding (a file, or a name in " + mention("aesthetic_dir") + ") to "
                            "compare over " + mention("aesthetic_weights") + " on top of every step; '' = none",
                            group="aesthetic")
    aesthetic_dir: str = option("models/aesthetic_embeddings", "where aesthetic embeddings are found by name",
                                group="aesthetic", folder=True)
    aesthetic_weights: str = option("0,0.2", "aesthetic weights to compare, comma-separated (0 = without it; the "
                                    "scores are measured at the one nearest 0)", group="aesthetic")
    aesthetic_steps: int = option(5, "the aesthetic embedding's optimisation steps of the text encoder", min=0,
                                  max=100, group="aesthetic")
    aesthetic_lr: float = option(1e-4, "their learning rate", min=0.0, group="aesthetic")
    images: int = option(2, "images per prompt and step (seeds seed, seed+1, ...), the same for every step", min=1,
                         max=16)
    seed: int = option(0, "the first seed")
    sample_steps: int = option(20, "sampling steps", min=1)
    cfg_scale: float = option(7.0, "CFG scale", min=0.0)
    size: int = option(0, "image side in pixels; 0 = the run's resolution", min=0)
    clip: str = option("", "the CLIP image tower for fidelity and leakage, from local files: an open_clip folder, "
                       "ARCH/PRETRAINED in your hub cache, 'toy'; '' = the model family's (toy on the toy model); "
                       "'none' = skip both")
    steps: str = option("", "only these saved steps, comma-separated; '' = all")
    keep: str = option("", "copy a saved step to the result's name: its step number, or 'suggested'; '' = only "
                       "compare")
    model: str = option("", "the base model; '' = the run's")
    out: str = option("", "folder for grid.png, scores.png, index.html and scores.json; '' = RUN_DIR/evaluation",
                      folder=True)
    device: str = option("auto", "cuda, cpu or auto")
    memory_mode: str = option("normal", "normal | medvram | lowvram", choices=("normal", "medvram", "lowvram"))

    def __post_init__(self):
        check_bounds(self)
        if not self.run_dir:
            raise ValueError("run_dir is required: the run's log folder, e.g. scal-sdt-runs/NAME")
        number_list(self.strengths, "strengths")
        if any(not 0 <= w <= 1 for w in number_list(self.aesthetic_weights, "aesthetic_weights")):
            raise ValueError(f"aesthetic_weights {self.aesthetic_weights!r}: each between 0 and 1")
        if self.steps:
            number_list(self.steps, "steps")
        if self.keep not in ("", "suggested") and not self.keep.isdigit():
            raise ValueError(f"keep {self.keep!r}: give a saved step's number or 'suggested' (see {mention('steps')})")
