"""The parameters of an embedding: creating one and training one."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import check_bounds, option
from ..lora_layers.network import UNET_PARTS
from ..host.toy import MODEL_HELP, TOY_NAME
from ..training.options import TrainingOptions

FORMATS = ("safetensors", "pt", "png")
MODES = ("ti", "apt")
CFG_SCHEDULES = ("none", "linear", "cos", "cos2")
#: the DreamArtist author's recommendations (README of 7eu7d7/DreamArtist-sd-webui-extension), as presets
APT_PRESETS = {
    "dreamartist": {"mode": "apt", "vectors": 3, "neg_vectors": 6, "lr": "0.0025", "cfg_scale": "3-5",
                    "steps": 1500, "about": "3 / 6 vectors, lr 0.0025, CFG 3-5, 1500 steps"},
    "dreamartist-strong": {"mode": "apt", "vectors": 3, "neg_vectors": 10, "lr": "0.005", "cfg_scale": "5",
                           "steps": 3000, "about": "3 / 10 vectors, lr 0.005, CFG 5, 3000 steps"},
}


def apply_apt_preset(cfg, explicit=frozenset()):
    """``cfg`` with its APT preset's values for every option the user did not give."""
    import dataclasses

    if not cfg.apt_preset:
        return cfg
    values = {k: v for k, v in APT_PRESETS[cfg.apt_preset].items() if k != "about" and k not in explicit}
    return dataclasses.replace(cfg, **values)
NAME_RE = re.compile(r"^(?!\.)[^\s\x00-\x1f<>:\"/\\|?*,()\[\]]+$")  # no leading dot: not ".", "..", hidden


def check_name(name: str) -> None:
    if not name:
        raise ValueError("name is required: the word you will write in prompts")
    if not NAME_RE.match(name):
        raise ValueError(f"name {name!r} must be one word without spaces, commas, brackets or path characters")


@dataclass(kw_only=True)
class CreateEmbeddingConfig:
    name: str = option(help="the embedding's name: the word you write in the prompt", group="embedding")
    vectors: int = option(1, "vectors per token (the embedding takes this many token slots)", min=1, max=75,
                          group="embedding")
    init_text: str = option("*", "text whose token vectors start the embedding, spread over the vectors; "
                                 "empty = zeros", group="embedding")
    overwrite: bool = option(False, "replace an existing embedding of that name", group="embedding")
    format: str = option("safetensors", "file format: safetensors, pt (the WebUI's layout) or png (embedded in a "
                                        "picture)", choices=FORMATS, group="embedding")
    model: str = option(TOY_NAME, "model: " + MODEL_HELP, group="embedding")
    out: str = option("embeddings", "embeddings folder", group="embedding", folder=True)
    device: str = option("auto", "cuda, cpu or auto", group="embedding")

    def __post_init__(self):
        check_name(self.name)
        check_bounds(self)


@dataclass(kw_only=True)
class EmbeddingConfig(TrainingOptions):
    """Textual Inversion: learn a few token vectors that make the frozen model draw the concept in the data."""

    name: str = option(help="the embedding's name: the word you write in the prompt", group="embedding")
    vectors: int = option(1, "vectors per token", min=1, max=75, group="embedding")
    init_text: str = option("*", "text whose token vectors start the embedding; empty = zeros", group="embedding")
    overwrite: bool = option(False, "replace an existing embedding of that name", group="embedding")
    format: str = option("safetensors", "file format of the result: safetensors, pt or png", choices=FORMATS,
                         group="embedding")
    # APT: DreamArtist-style contrastive prompt tuning (a positive and a negative embedding learned together)
    mode: str = option("ti", "ti (Textual Inversion) or apt (also learn NAME-neg for the negative prompt, CFG inside "
                       "training, as DreamArtist does)", choices=MODES, group="embedding")
    apt_preset: str = option("", "APT settings after the DreamArtist author: " + "; ".join(
        f"{k}: {v['about']}" for k, v in APT_PRESETS.items()) + " (options you give yourself win)",
                             choices=("",) + tuple(APT_PRESETS), group="apt")
    neg_vectors: int = option(6, "APT: vectors of NAME-neg", min=1, max=75, group="apt")
    neg_init_text: str = option("", "APT: text whose token vectors start NAME-neg; empty = zeros", group="apt")
    neg_lr: float = option(0.0, "APT: learning rate of NAME-neg (it follows lr's schedule, scaled by neg_lr / the "
                           "first rate of lr); 0 = the same as lr", min=0.0, group="apt")
    neg_prompt: str = option("name", "APT: the negative side's prompt: name (NAME-neg alone, as you write it in the "
                             "negative prompt) or mirror (the positive's template line with NAME-neg)",
                             choices=("name", "mirror"), group="apt")
    cfg_scale: str = option("1.5-3.0", "APT: CFG scale used inside training, a value or a range lo-hi", group="apt")
    cfg_schedule: str = option("none", "APT: the scale over the timestep t/T: none (drawn from the range per image), "
                               "linear, cos or cos2 (lo at t=0, hi at t=T)", choices=CFG_SCHEDULES, group="apt")
    rec_weight: float = option(0.0, "APT: weight of the reconstruction loss (the predicted x0 decoded by the VAE, L1 "
                               "against the image); 0 = off", min=0.0, group="apt")
    rec_crop: int = option(0, "APT: decode only a random crop of this many latent pixels (x8 image pixels) for the "
                           "reconstruction loss; 0 = the whole latent", min=0, group="apt")
    rec_downscale: int = option(1, "APT: decode the latent downscaled by this factor for the reconstruction loss",
                                min=1, max=8, group="apt")
    disc_clip: str = option("", "APT discriminator: an open_clip image encoder you have (folder, 'toy', hf-hub:REPO, "
                            "ARCH/PRETRAINED)", group="apt")
    disc_head: str = option("", "APT discriminator: its score head, a .safetensors/.pt of a linear layer or the LAION "
                            "aesthetic predictor's MLP on the CLIP image embedding", group="apt")
    disc_weight: float = option(0.1, "APT: weight of the discriminator loss (minus the mean score)", min=0.0,
                                group="apt")
    disc_mode: str = option("add", "APT: add the discriminator loss, or replace the diffusion loss with it",
                            choices=("add", "replace"), group="apt")
    # selected UNet parts learn too, as a LoRA (kohya format) used with <lora:NAME-unet:1>
    unet_parts: str = option("", "also train these UNet parts, as a LoRA saved to lora_out/NAME-unet.safetensors "
                             "(write <lora:NAME-unet:1> in the prompt): attn2-kv (cross-attention keys and values), "
                             "attn2 (all cross-attention), attn (self- and cross-attention); '' = off",
                             choices=("", *UNET_PARTS), group="unet parts")
    unet_lr: float = option(1e-4, "learning rate of the UNet LoRA (it follows lr's schedule, scaled by unet_lr / the "
                            "first rate of lr)", min=0.0, group="unet parts")
    unet_rank: int = option(4, "rank of the UNet LoRA", min=1, max=256, group="unet parts")
    lora_out: str = option("Lora", "folder for NAME-unet.safetensors (in the WebUI: its models/Lora)",
                           group="unet parts", folder=True)

    def __post_init__(self):
        check_name(self.name)
        super().__post_init__()
        if self.mode == "apt":
            check_name(f"{self.name}-neg")
            cfg_range(self.cfg_scale)
            if bool(self.disc_clip) != bool(self.disc_head):
                raise ValueError("disc_clip and disc_head go together: the image encoder and its score head")
            if self.disc_mode == "replace" and not self.disc_clip:
                raise ValueError("disc_mode replace needs a discriminator (disc_clip and disc_head)")


def cfg_range(text: str) -> tuple[float, float]:
    """``"3"`` -> (3, 3); ``"1.5-3.0"`` -> (1.5, 3.0)."""
    try:
        parts = [float(p) for p in text.replace(" ", "").split("-") if p]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] < 0 or parts[-1] < parts[0]:
        raise ValueError(f"cfg_scale {text!r}: give a scale (3) or a range lo-hi (1.5-3.0)")
    return parts[0], parts[-1]
