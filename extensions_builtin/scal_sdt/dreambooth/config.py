"""The parameters of `scal-sdt dreambooth`: the one source for the CLI, the form, the API and the run's JSON."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..textual_inversion.config import check_name
from ..training.options import TrainingOptions


@dataclass(kw_only=True)
class ConceptOptions(TrainingOptions):
    """What DreamBooth and LoRA training share: the concepts (instance images and prompts, class images with prior
    preservation, or a concepts JSON), the text encoders' rate and stop, pivotal tuning and the loss options."""

    instance_data: str = option("", "folder of the concept's images (captions beside them are used by [filewords])",
                                group="concepts", folder=True)
    instance_prompt: str = option("", "the prompt of every instance image, e.g. 'a photo of sks dog'; [filewords] "
                                  "puts the image's caption in; '' = the caption alone", group="concepts")
    class_data: str = option("", "folder of class images; missing ones are generated into it with class_prompt (and "
                             "reused next time); '' = no prior preservation", group="concepts",
                             folder=True)
    class_prompt: str = option("", "the prompt of the class images, e.g. 'a photo of a dog'", group="concepts")
    num_class_images: int = option(50, "class images to have in class_data (the missing ones are generated)", min=0,
                                   group="concepts")
    prior_loss_weight: float = option(1.0, "weight of the class images' loss", min=0.0, group="concepts")
    concepts: str = option("", "a JSON file with a list of concepts (instance_data, instance_prompt, class_data, "
                           "class_prompt, num_class_images, weight: the concept's loss weight, repeats: its images' "
                           "share of the turns as kohya's num_repeats, caption_extension; the DreamBooth "
                           "extension's names instance_data_dir / class_data_dir work too) instead of the single one "
                           "above", group="concepts")
    class_steps: int = option(20, "sampling steps for generated class images", min=1, group="concepts")
    class_cfg: float = option(7.0, "CFG scale for generated class images", min=0.0, group="concepts")
    train_text_encoder: bool = option(False, "also train the text encoder(s) (DreamBooth: their weights; LoRA: "
                                      "adapters on them)", group="concepts")
    text_encoder_lr: float = option(0.0, "the text encoders' learning rate (on lr's schedule); 0 = lr", min=0.0,
                                    group="concepts")
    stop_text_encoder: float = option(1.0, "freeze the text encoders after this fraction of the steps", min=0.0,
                                      max=1.0, group="concepts")
    pivotal_vectors: int = option(0, "pivotal tuning: also learn a new embedding NAME of this many vectors (write "
                                  "[name] in the prompts); saved in embeddings_out and bundled in the LoRA file; "
                                  "0 = off", min=0, max=75, group="concepts")
    pivotal_init_text: str = option("*", "text whose token vectors start that embedding", group="concepts")
    pivotal_lr: float = option(5e-3, "that embedding's learning rate (on lr's schedule)", min=0.0, group="concepts")
    embeddings_out: str = option("embeddings", "folder for the pivotal embedding (in the WebUI: its embeddings folder)",
                                 group="output", folder=True)

    def __post_init__(self):
        super().__post_init__()
        if not self.concepts and not self.instance_data and not self.data:
            raise ValueError("instance_data is required: the folder of the concept's images (or a concepts JSON)")
        if self.class_data and not self.class_prompt and not self.concepts:
            raise ValueError("class_data needs a class_prompt, e.g. 'a photo of a dog'")


@dataclass(kw_only=True)
class DreamBoothConfig(ConceptOptions):
    """DreamBooth: the whole UNet (and optionally the text encoders) learns a concept from a few images, while
    class images the model made itself keep what it knew of the class (prior preservation)."""

    name: str = option(help="the new checkpoint's name (NAME.safetensors in out)", group="dreambooth")
    # DreamBooth's usual settings where TrainingOptions' defaults suit embeddings
    lr: str = option("2e-6", "learning rate, or the WebUI's schedule syntax '2e-6:400, 1e-6'", group="optimisation")
    steps: int = option(800, "optimizer steps to train", min=1, group="optimisation")
    template: str = option("none", "unused by DreamBooth: instance_prompt and class_prompt are the prompts",
                           group="model and data")
    out: str = option("models/Stable-diffusion", "folder for NAME.safetensors (and its .yaml and run JSON)",
                      group="output", folder=True)
    save_every: int = option(0, "also write the checkpoint every N steps into the run folder (0 = only at the end)",
                             min=0, group="output")
    preview_every: int = option(200, "render preview images every N steps (0 = never)", min=0, group="output")
    master_weights: str = option("fp32", "the trained weights' dtype: fp32 (mixed precision, the usual) or bf16 "
                                 "(full bf16: weights, gradients and optimizer state in bf16, about half the memory)",
                                 choices=("fp32", "bf16"), group="memory")
    vram_gb: float = option(0.0, "the card's memory in GiB: the run's peak is estimated first and, if it does not fit, "
                            "training stops before it starts and says which options to switch on; 0 = the CUDA "
                            "device's own size, and only a warning", min=0.0, group="memory")
    cache_text: bool = option(True, "encode each prompt once and move the text encoders off the device (when they "
                              "are not trained and tags are not shuffled or dropped)", group="memory")
    extract_lora: int = option(0, "also write NAME-lora.safetensors: a LoRA of this rank extracted from the UNet's "
                               "change (kohya format, <lora:NAME-lora:1> on the source model); 0 = off", min=0,
                               max=1024, group="output")
    extract_lora_conv: int = option(0, "with extract_lora: also the convolutions' change at this rank (kohya's LoCon "
                                    "layout, conv_dim; the WebUI's Lora loads it); 0 = Linear layers only", min=0,
                                    max=1024, group="output")
    lora_out: str = option("", "folder for the extracted LoRA; '' = beside the checkpoint (in the WebUI: models/Lora)",
                           group="output", folder=True)
    save_fp16: bool = option(True, "write the checkpoint in fp16 (half the size; what the WebUI loads anyway)",
                             group="dreambooth")
    overwrite: bool = option(False, "replace an existing checkpoint of that name", group="dreambooth")

    def __post_init__(self):
        check_name(self.name)
        super().__post_init__()
