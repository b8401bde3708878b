"""The parameters of `scal-sdt generate`."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, mention, option
from ..host.toy import MODEL_HELP, TOY_NAME


@dataclass(kw_only=True)
class GenerateConfig:
    model: str = option(TOY_NAME, "model: " + MODEL_HELP)
    prompt: str = option(help="the prompt; embedding names from " + mention("embeddings") + " work in it as in the "
                              "WebUI")
    negative: str = option("", "negative prompt")
    n: int = option(1, "number of images (image i uses seed + i)", min=1)
    seed: int = option(0, "seed of the first image")
    steps: int = option(20, "sampling steps (DDIM)", min=1)
    cfg_scale: float = option(7.0, "classifier-free guidance scale", min=0.0)
    width: int = option(0, "width in pixels; 0 = the model's native size", min=0)
    height: int = option(0, "height in pixels; 0 = the model's native size", min=0)
    embeddings: str = option("", "a folder of embeddings (.safetensors, .pt, .bin, .png) usable by name", folder=True)
    hypernetwork: str = option("", "a hypernetwork .pt file to apply to every image (on the page: also a name from "
                                   "its hypernetworks folder)")
    hypernetwork_strength: float = option(1.0, "its strength (0 = off)", min=0.0)
    lora: str = option("", "a LoRA .safetensors to apply to every image (kohya / LyCORIS layout: LoRA, LoCon, LoHa, "
                           "LoKr, DoRA): ours (train-lora, NAME-unet from embedding training with unet_parts, "
                           "NAME-lora from DreamBooth) or another's — UNet layers "
                           "named the original or the diffusers way, text-encoder layers, LoCon convolutions")
    lora_strength: float = option(1.0, "its strength (0 = off)")
    aesthetic: str = option("", "an aesthetic embedding (a .pt/.safetensors file, or a name in "
                                + mention("aesthetic_dir") + ") to "
                                "nudge every image towards; '' = off", group="aesthetic")
    aesthetic_dir: str = option("models/aesthetic_embeddings", "where aesthetic embeddings are found by name",
                                group="aesthetic", folder=True)
    aesthetic_weight: float = option(0.2, "how much of the tuned conditioning (under ~0.25 keeps the content)",
                                     min=0.0, max=1.0, group="aesthetic")
    aesthetic_steps: int = option(5, "optimisation steps of the text encoder", min=0, max=100, group="aesthetic")
    aesthetic_lr: float = option(1e-4, "their learning rate", min=0.0, group="aesthetic")
    aesthetic_slerp: bool = option(False, "slerp the target towards the prompt's own embedding", group="aesthetic")
    aesthetic_slerp_angle: float = option(0.1, "the slerp's angle (0-1)", min=0.0, max=1.0, group="aesthetic")
    aesthetic_text: str = option("", "an aesthetic text blended into the target", group="aesthetic")
    aesthetic_text_negative: bool = option(False, "move away from the aesthetic text instead", group="aesthetic")
    aesthetic_batchwise: bool = option(True, "tune once for all prompts of a batch (off: each distinct prompt on its "
                                             "own)", group="aesthetic")
    aesthetic_clip: str = option("", "the CLIP whose text projection matches the embedding, for files that do not "
                                     "store it ('' = the family's: toy, or ViT-L-14/openai for SD1 and SDXL, "
                                     "ViT-H-14/laion2b_s32b_b79k for SD2; from the hub cache, never downloaded)",
                                 group="aesthetic")
    out: str = option("outputs", "folder for the PNG files", folder=True)
    device: str = option("auto", "cuda, cpu or auto")
    memory_mode: str = option("normal", "normal | medvram | lowvram", choices=("normal", "medvram", "lowvram"))

    def __post_init__(self):
        check_bounds(self)
        if not self.prompt:
            raise ValueError("prompt is required")
