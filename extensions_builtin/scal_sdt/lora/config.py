"""The parameters of `scal-sdt train-lora`: the one source for the CLI, the form, the API and the file's metadata."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..dreambooth.config import ConceptOptions
from ..textual_inversion.config import check_name
from .adapters import INITS, NETWORKS, check_network


def parse_list(text: str, what: str, cast=float) -> list:
    """``"4, 4, 8"`` -> [4, 4, 8]; '' -> []."""
    if not text.strip():
        return []
    try:
        return [cast(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r}: give comma-separated numbers, one per block (IN00…, MID, OUT00…)"
                         ) from None


@dataclass(kw_only=True)
class LoraConfig(ConceptOptions):
    """A LoRA (or LoCon, LoHa, LoKr, DoRA) of a concept or style: small adapters on the UNet (and optionally the
    text encoders) learn from the images while the model's own weights stay as they are; the result is a kohya-format
    .safetensors for <lora:NAME:1>."""

    name: str = option(help="the LoRA's name (NAME.safetensors in out; <lora:NAME:1> in prompts)", group="lora")
    network: str = option("lora", "lora (attention and feed-forward layers), locon (and the ResNet convolutions), "
                          "loha (Hadamard product), lokr (Kronecker product), dora (LoRA with a learned magnitude): "
                          "LyCORIS' implementations", choices=NETWORKS, group="lora")
    rank: int = option(16, "the adapters' rank (kohya's network_dim)", min=1, max=1024, group="lora")
    alpha: float = option(8.0, "scale alpha / rank (kohya's network_alpha); must be > 0", min=0.0, group="lora")
    conv_rank: int = option(0, "rank of the ResNet convolutions' adapters (locon, loha, lokr, dora); 0 = rank", min=0,
                            max=1024, group="lora")
    conv_alpha: float = option(0.0, "alpha of those; 0 = alpha", min=0.0, group="lora")
    train_convs: bool = option(True, "with locon, loha, lokr or dora: adapters on the ResNet convolutions too",
                               group="lora")
    block_dims: str = option("", "rank per UNet block, comma-separated (kohya's block_dims: IN00…, MID, OUT00…; 25 "
                             "for SD1/SD2, 23 for SDXL); 0 leaves a block out; '' = rank everywhere", group="lora")
    block_lrs: str = option("", "learning-rate weight per UNet block, the same order (kohya's block lr weights); 0 "
                            "freezes a block; '' = 1 everywhere", group="lora")
    rank_dropout: float = option(0.0, "drop each rank of an adapter's output with this probability while training",
                                 min=0.0, max=1.0, group="lora")
    module_dropout: float = option(0.0, "skip a whole adapter for a step with this probability", min=0.0, max=1.0,
                                   group="lora")
    network_init: str = option("kaiming", "down projection's start (up starts at zero, so a new LoRA changes "
                               "nothing): kaiming (kohya, LyCORIS) or gaussian (peft's N(0, 1/rank))", choices=INITS,
                               group="lora")
    lokr_factor: int = option(-1, "LoKr's Kronecker factor (-1 = as balanced as the layer allows)", group="lora")
    training_comment: str = option("", "a comment stored in the file (ss_training_comment)", group="lora")
    overwrite: bool = option(False, "replace an existing LoRA of that name", group="lora")
    # LoRA's usual settings where TrainingOptions' defaults suit embeddings
    lr: str = option("1e-4", "the UNet adapters' learning rate, or the WebUI's schedule syntax '1e-4:400, 5e-5'",
                     group="optimisation")
    steps: int = option(800, "optimizer steps to train", min=1, group="optimisation")
    template: str = option("none", "unused: instance_prompt and class_prompt are the prompts", group="model and data")
    out: str = option("models/Lora", "folder for NAME.safetensors", group="output", folder=True)
    save_every: int = option(0, "also write the LoRA every N steps into the run folder (0 = only at the end)", min=0,
                             group="output")
    preview_every: int = option(200, "render preview images every N steps (0 = never)", min=0, group="output")
    cache_text: bool = option(True, "encode each prompt once and move the text encoders off the device (when they "
                              "are not trained and tags are not shuffled or dropped)", group="memory")

    def __post_init__(self):
        check_name(self.name)
        check_network(self.network)
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0: the adapters' scale is alpha / rank (alpha = rank means 1)")
        super().__post_init__()
        parse_list(self.block_dims, "block_dims", int)
        parse_list(self.block_lrs, "block_lrs")
        if any(d < 0 for d in parse_list(self.block_dims, "block_dims", int)):
            raise ValueError("block_dims: ranks must be >= 0")

    @property
    def convs(self) -> bool:
        return self.network != "lora" and self.train_convs
