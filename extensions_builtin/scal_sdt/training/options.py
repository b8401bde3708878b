"""Options every trainer shares. A trainer's config subclasses :class:`TrainingOptions`, so each option is
declared once and appears in the form, the command line, the API body and the saved metadata."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, mention, option
from ..host.toy import MODEL_HELP, TOY_NAME
from ..host.placement import MEMORY_MODES
from .lr import PiecewiseLR, SCHEDULES
from .optimizers import OPTIMIZERS, WHOLE_GROUP
from .objective import LOSSES, TIMESTEP_DISTRIBUTIONS, parse_timestep_range
from .presets import preset_names
from .task_presets import TASKS
from .templates import list_templates

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CLIP_MODES = ("none", "value", "norm")
LATENT_SAMPLING = ("once", "deterministic", "random")


def size_list(text: str) -> list[int]:
    """``"512,768"`` -> [512, 768] (``resolutions``)."""
    try:
        sizes = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ValueError(f"resolutions {text!r}: give sizes in pixels, e.g. 512,768") from None
    if any(r < 64 or r % 64 for r in sizes):
        raise ValueError(f"resolutions {text!r}: each size must be a multiple of 64 (and at least 64)")
    return sizes


def weight_map(text: str) -> dict[str, float]:
    """``"mychar=2, bg=0.5"`` -> {"mychar": 2.0, "bg": 0.5} (``folder_weights``)."""
    out = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, value = part.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not name.strip() or weight < 0:
            raise ValueError(f"folder_weights {text!r}: give name=weight pairs with weights >= 0, e.g. "
                             f"mychar=1,10_background=0.5")
        out[name.strip()] = weight
    return out


def mask_range(text: str) -> tuple[float, float]:
    """``"0-1"`` -> (0.0, 1.0): the loss weights of mask values 0 and 1."""
    try:
        lo, hi = (float(p) for p in text.replace(" ", "").split("-"))
    except ValueError:
        raise ValueError(f"mask_weights {text!r}: give lo-hi, e.g. 0-1 or 1-3") from None
    if lo < 0 or hi < 0 or lo == hi == 0:
        raise ValueError(f"mask_weights {text!r}: weights must be >= 0 and not both 0")
    return lo, hi


@dataclass(kw_only=True)
class TrainingOptions:
    # model and data
    model: str = option(TOY_NAME, "model: " + MODEL_HELP, group="model and data")
    data: str = option("", "dataset folder: images with .txt captions beside them (kohya 'N_name' folders repeat N times); "
                           "'demo' makes a small built-in data set", group="model and data", folder=True)
    resolution: int = option(0, "training resolution in pixels; 0 = the model's native size", min=0, group="model and data")
    buckets: bool = option(False, "aspect-ratio buckets instead of square centre crops", group="model and data")
    template: str = option("subject_filewords", "prompt template: a shipped name (none, style, style_filewords, subject, "
                                                "subject_filewords, hypernetwork, filewords) or a .txt file", group="model and data",
                             suggestions=list_templates)
    shuffle_tags: bool = option(False, "shuffle the comma-separated tags of each caption", group="model and data")
    tag_dropout: float = option(0.0, "drop each tag with this probability", min=0.0, max=1.0, group="model and data")
    keep_tokens: int = option(0, "keep the first N tags in place when shuffling or dropping", min=0, group="model and data")
    caption_dropout: float = option(0.0, "train on an empty caption (the template without the image's words) with "
                                         "this probability, so the concept is also learnt unprompted (kohya's "
                                         "caption_dropout_rate; 0.05-0.1 is usual)", min=0.0, max=1.0,
                                    group="model and data")
    random_crop: bool = option(False, "crop at a random place instead of the centre where an image overhangs its "
                                      "bucket (kohya's random_crop); cached as augment_variants copies",
                               group="model and data")
    color_jitter: float = option(0.0, "vary brightness, contrast and saturation by up to this fraction (0.1 is "
                                      "mild); cached as augment_variants copies; 0 = off", min=0.0, max=1.0,
                                 group="model and data")
    augment_variants: int = option(4, "with random_crop or color_jitter: differently augmented copies of each "
                                      "image encoded once and drawn from at random (the latents stay cached)",
                                   min=1, max=64, group="model and data")
    resolutions: str = option("", "several training sizes in one run, e.g. 512,768: every image is cached at "
                                  "each (bucketed by aspect with --buckets) and a batch never mixes sizes; "
                                  "'' = --resolution alone", group="model and data")
    folder_weights: str = option("", "loss weight per folder, e.g. 'mychar=1,10_background=0.5': a kohya N_name "
                                     "folder by its name with or without N_; images elsewhere weigh 1",
                                 group="model and data")
    latent_sampling: str = option("once", "latent cache: once (one sample), deterministic (the mean), random (a new "
                                          "sample each use)", choices=LATENT_SAMPLING, group="model and data")
    flip: bool = option(False, "random horizontal flips", group="model and data")
    alpha_weight: bool = option(False, "use a PNG's alpha channel as the loss weight", group="model and data")
    mask_weights: str = option("0-1", "loss weight at mask value 0 and 1 (NAME_mask.png, NAME_att.png, alpha), e.g. 1-3 "
                               "keeps the unmasked area in the loss at a third of the masked one's weight",
                               group="model and data")
    data_source: str = option("", "where the images come from and whether you may train on them (artists' consent, "
                              "licence): a free note saved in the result's metadata", group="model and data")
    # optimisation
    steps: int = option(1000, "optimizer steps to train", min=1, group="optimisation")
    batch_size: int = option(1, "images per micro-batch", min=1, group="optimisation")
    grad_accum: int = option(1, "micro-batches per optimizer step (gradient accumulation)", min=1, group="optimisation")
    lr: str = option("0.005", "learning rate, or the WebUI's schedule syntax '0.005:100, 1e-3:1000, 1e-5'",
                     group="optimisation")
    lr_schedule: str = option("piecewise", "piecewise (the lr syntax as written), cosine (from the first rate down), "
                                           "cosine_restarts (cosine in " + mention("lr_cycles") + " cycles), exponential "
                                           "(down to a hundredth "
                                           "of the first rate), constant", choices=SCHEDULES, group="optimisation")
    lr_cycles: int = option(3, "cycles of cosine_restarts", min=1, group="optimisation")
    warmup_steps: int = option(0, "linear warm-up steps", min=0, group="optimisation")
    optimizer: str = option("adamw", "adamw; adamw8bit (bitsandbytes, CUDA: a quarter of the state); adafactor "
                                     "(factored moments: the least memory); prodigy or dadapt-adam (find their own "
                                     "step size: lr 1.0 unless you give one); lion (sign of the momentum: use a "
                                     "3-10x smaller lr than AdamW); came (Adafactor's memory, AdamW's stability); "
                                     "schedulefree-adamw (no decay schedule needed; saves and previews its average)",
                             choices=OPTIMIZERS, group="optimisation")
    weight_decay: float = option(0.0, "weight decay (decoupled, as AdamW's)", min=0.0, group="optimisation")
    clip_grad: str = option("none", "gradient clipping: none, value or norm", choices=CLIP_MODES, group="optimisation")
    clip_value: float = option(1.0, "the clipping threshold", min=0.0, group="optimisation")
    seed: int = option(0, "random seed (data order, noise, timesteps)", group="optimisation")
    max_bad_steps: int = option(5, "stop after this many non-finite steps in a row (each is rolled back and halves the lr)",
                                min=1, group="optimisation")
    # the diffusion objective (training/objective.py): every knob off by default
    loss: str = option("mse", "loss function: mse, huber (kohya's pseudo-Huber: squared error for small errors, "
                              "linear for large ones, less pulled by outliers) or smooth-l1 (the same divided by "
                              "huber_c)", choices=LOSSES, group="objective")
    huber_c: float = option(0.1, "where huber / smooth-l1 turn from squared to linear (kohya's huber_c)", min=1e-6,
                            group="objective")
    min_snr_gamma: float = option(0.0, "min-SNR loss weighting with this gamma (5 is usual): each timestep's loss "
                                       "times min(SNR, gamma)/SNR (v models: /(SNR+1)); 0 = off", min=0.0,
                                  group="objective")
    debiased_estimation: bool = option(False, "weight each timestep's loss by 1/sqrt(SNR) (v models: 1/(SNR+1)), "
                                              "as kohya's debiased_estimation_loss", group="objective")
    noise_offset: float = option(0.0, "offset noise (0.05-0.1 lets the model learn darker darks and brighter "
                                      "brights); 0 = off", min=0.0, group="objective")
    multires_noise_iterations: int = option(0, "pyramid noise: add noise at this many coarser scales (6-10 is "
                                                "usual); 0 = off", min=0, max=20, group="objective")
    multires_noise_discount: float = option(0.3, "each coarser scale's weight falls by this factor (0.1-0.3)",
                                            min=0.0, max=1.0, group="objective")
    timestep_range: str = option("", "train only on timesteps LO up to HI (not included), e.g. 200,800; '' = all "
                                     "(0,1000)", group="objective")
    timestep_distribution: str = option("uniform", "how timesteps are drawn in that range: uniform, or "
                                                   "logit-normal (more of the middle ones, as SD3)",
                                        choices=TIMESTEP_DISTRIBUTIONS, group="objective")
    input_perturbation: float = option(0.0, "noise the input by this much more than the target says (0.1 is "
                                            "usual; reduces exposure bias); 0 = off", min=0.0, group="objective")
    zero_terminal_snr: bool = option(False, "rescale the schedule so its last timestep is pure noise (v-prediction "
                                            "models only; lets them learn very dark and bright images)",
                                     group="objective")
    task_preset: str = option("", "what the run learns: character, object, style or concept — sets the rate, steps, "
                                  "vectors or rank, template, flips and loss weighting for the trainer and the "
                                  "model's family (combines with " + mention("preset") + "); options you give "
                                  "yourself win", choices=("",) + TASKS, group="optimisation")
    # memory and speed
    preset: str = option("", "memory preset by card size: 6gb | 8gb | 12gb | 24gb (batch, precision, checkpointing, "
                             "memory mode for the model family); options you give yourself win",
                         choices=("",) + preset_names(), group="memory")
    device: str = option("auto", "cuda, cpu, cuda:1, ... or auto", group="memory")
    precision: str = option("auto", "fp32, fp16 (autocast + grad scaler), bf16; auto = fp16 on CUDA, fp32 on CPU",
                            choices=PRECISIONS, group="memory")
    memory_mode: str = option("normal", "normal | medvram (only the parts a step needs on the device) | lowvram "
                                        "(UNet blocks streamed one at a time)", choices=MEMORY_MODES, group="memory")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory, slower)",
                                          group="memory")
    offload_vae: bool = option(True, "move the VAE off the device once the latents are cached", group="memory")
    fused_backward: bool = option(False, "step the optimizer inside the backward pass, each weight as soon as its "
                                  "gradient is ready, so the gradients are never all held (a weights-sized buffer "
                                  "less: what puts SDXL under 10 GB in DreamBooth); no " + mention("clip_grad", "norm"),
                                  group="memory")
    ema_decay: float = option(0.0, "keep an exponential moving average of the trained weights with this decay (0.999 "
                              "is usual; APT: of both embeddings) and save and preview it instead of the last step's "
                              "weights; 0 = off", min=0.0, max=0.99999, group="optimisation")
    ema_on_cpu: bool = option(False, "keep that average in the computer's memory instead of on the card (slower: the "
                              "weights cross every step)", group="memory")
    # outputs
    out: str = option("embeddings", "folder for the result", group="output", folder=True)
    log_dir: str = option("", "folder for checkpoints, previews, loss log and plot; default scal-sdt-runs/NAME",
                          group="output", folder=True)
    save_every: int = option(500, "save a checkpoint every N steps (0 = only at the end)", min=0, group="output")
    preview_every: int = option(500, "render preview images every N steps (0 = never)", min=0, group="output")
    preview_prompt: str = option("", "prompt(s) for previews, several separated by '|' make a grid; [name] is the "
                                     "name being trained; default: the first template line filled in with the name "
                                     "and the first image's caption",
                                 group="output")
    preview_negative: str = option("", "negative prompt for previews", group="output")
    preview_steps: int = option(20, "sampling steps for previews", min=1, group="output")
    preview_cfg: float = option(7.0, "CFG scale for previews", min=0.0, group="output")
    preview_seed: int = option(-1, "seed for previews; -1 = the training seed", group="output")
    resume: bool = option(False, "continue the run in the log folder from its newest complete checkpoint",
                          group="output")
    keep_checkpoints: int = option(3, "rolling checkpoints to keep (older ones are deleted)", min=1, group="output")
    keep_every_minutes: float = option(0.0, "also keep one checkpoint every N minutes for good (0 = off)", min=0.0,
                                       group="output")
    validation_images: int = option(0, "hold out this many images of the data set for a validation loss", min=0,
                                    group="output")
    validation_data: str = option("", "a folder of validation images (instead of holding some out)", group="output", folder=True)
    tensorboard: bool = option(True, "also write TensorBoard event files (loss, learning rate, validation loss, "
                                     "previews) beside loss.csv, when the tensorboard package is installed (pip "
                                     "install 'scal-sdt[tensorboard]')", group="output")
    evaluate: bool = option(False, "when the run ends, compare its saved steps (" + mention("save_every") + "): "
                                   "a grid of steps x prompts, fidelity, leakage and validation loss per step, a "
                                   "suggested step; as scal-sdt evaluate RUN_DIR", group="output")
    validation_every: int = option(100, "validation loss every N steps (fixed timesteps, noises and seed)", min=1,
                                   group="output")

    #: a trainer that works out a rate itself accepts lr "auto" (it replaces it before the loop runs)
    LR_AUTO = False

    def __post_init__(self):
        check_bounds(self)
        mask_range(self.mask_weights)
        if self.fused_backward and self.clip_grad == "norm":
            raise ValueError("fused_backward steps each weight before the whole gradient exists, so it cannot clip by "
                             f"norm; use {mention('clip_grad', 'value')} or {mention('fused_backward', False)}")
        if self.fused_backward and self.optimizer in WHOLE_GROUP:
            raise ValueError(f"fused_backward gives every weight its own optimizer, which {self.optimizer} cannot "
                             f"work with; choose adamw, adamw8bit, adafactor, lion or came, or "
                             f"{mention('fused_backward', False)}")
        parse_timestep_range(self.timestep_range)
        size_list(self.resolutions)
        weight_map(self.folder_weights)
        if self.LR_AUTO and self.lr.strip().lower() == "auto":
            return
        try:
            PiecewiseLR.parse(self.lr)
        except ValueError as e:
            raise ValueError(f"lr: {e}") from None
