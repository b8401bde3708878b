"""The parameters of `scal-sdt inspect`, `scal-sdt library` and `scal-sdt choose`."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, option
from ..host.toy import MODEL_HELP
from .chooser import FAMILIES as CHOICE_FAMILIES, GOAL_HELP, GOALS
from .identify import KINDS


@dataclass(kw_only=True)
class InspectConfig:
    files: list[str] = option(help="model files to describe (.pt, .ckpt, .bin, .safetensors, .png)", positional=True)
    json: bool = option(False, "print one JSON object per file instead of text")

    def __post_init__(self):
        check_bounds(self)
        if not self.files:
            raise ValueError("files: give at least one file")


@dataclass(kw_only=True)
class LibraryConfig:
    folders: list[str] = option(help="folders to list (embeddings, hypernetworks, Lora, Stable-diffusion, "
                                     "aesthetic_embeddings…), searched recursively", positional=True)
    model: str = option("", "the model to check each file's fit against and render previews with ('' = none: "
                            "kinds and details only): " + MODEL_HELP)
    search: str = option("", "show only items whose name, kind, family, details or metadata hold every word")
    kind: str = option("", "show only this kind ('' = all; lora includes LyCORIS)", choices=("", *KINDS[:-1]))
    fits_only: bool = option(False, "show only files that fit the model")
    previews: bool = option(False, "render A/B previews (without / with the item; networks at 0.5 and 1) for the "
                                   "items shown, once: they are cached by file hash", group="previews")
    prompt: str = option("a picture", "the previews' prompt (an embedding's name is appended to it)", group="previews")
    negative: str = option("", "the previews' negative prompt", group="previews")
    seed: int = option(0, "the previews' seed", group="previews")
    steps: int = option(20, "the previews' sampling steps", min=1, group="previews")
    cfg_scale: float = option(7.0, "the previews' guidance scale", min=0.0, group="previews")
    size: int = option(0, "the previews' size in pixels (0 = the model's native size)", min=0, group="previews")
    aesthetic_weight: float = option(0.2, "an aesthetic embedding's preview: how much of the tuned conditioning",
                                     min=0.0, max=1.0, group="previews")
    aesthetic_steps: int = option(5, "an aesthetic embedding's preview: text-encoder tuning steps", min=1,
                                  group="previews")
    aesthetic_lr: float = option(1e-4, "an aesthetic embedding's preview: the tuning's learning rate", min=0.0,
                                 group="previews")
    checkpoint_previews: bool = option(False, "render checkpoints too: the same prompt and seed on the loaded model "
                                              "and on each checkpoint, which is loaded for it (in the WebUI in place "
                                              "of the current model, which is loaded back afterwards: slow)",
                                       group="previews")
    cache: str = option("~/.cache/scal-sdt/library", "where previews and file hashes are kept", folder=True,
                        group="previews")
    device: str = option("auto", "cuda, cpu or auto")
    json: bool = option(False, "print one JSON object per item instead of text")

    def __post_init__(self):
        check_bounds(self)
        if not self.folders:
            raise ValueError("folders: give at least one folder")
        if self.previews and not self.model:
            raise ValueError("previews need a model: give --model")

    def preview_settings(self):
        from .previews import PreviewSettings

        return PreviewSettings(self.prompt, self.negative, self.seed, self.steps, self.cfg_scale, self.size,
                               self.aesthetic_weight, self.aesthetic_steps, self.aesthetic_lr)


@dataclass(kw_only=True)
class ChooseConfig:
    goal: str = option(help=GOAL_HELP, choices=GOALS)
    images: int = option(10, "how many pictures you have", min=1)
    vram_gb: float = option(8.0, "the card's memory in GB", min=0.5)
    family: str = option("sd1", "the model family: sd1, sd2 or sdxl", choices=CHOICE_FAMILIES)
    json: bool = option(False, "print the answer as JSON")

    def __post_init__(self):
        check_bounds(self)
