"""Where the toy world's trained SD1 model lives: ``--model toy`` everywhere a model is chosen."""
from __future__ import annotations

from pathlib import Path

TOY_NAME = "toy"
TOY_CHECKPOINT = Path(__file__).resolve().parent.parent / "toy_world" / "pretrained" / "toy-sd1.safetensors"


def toy_checkpoint() -> Path:
    if not TOY_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the toy model {TOY_CHECKPOINT} is missing; `scal-sdt make-toy-world` rebuilds it")
    return TOY_CHECKPOINT

#: the model choices every config's ``model`` field offers, in its help text
MODEL_HELP = ("toy (the toy world's trained SD1 model) | tiny-sd1 | tiny-sd2 | tiny-sdxl (random weights) | "
              "a checkpoint file | a diffusers folder")
