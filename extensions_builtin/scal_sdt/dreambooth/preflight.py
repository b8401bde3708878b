"""Before a DreamBooth run: its peak device memory, as arithmetic over the parameter counts and the options, and the
options that make it fit a card. The terms and their constants come from measurements (bench/dreambooth.py on an
H200: SD1 at 512 px and SDXL at 1024 px; bench/dreambooth_h200*.json, which a test holds the estimate to):

- trained weights: 4 bytes each (fp32 master weights) or 2 (``master_weights bf16``);
- their gradients, as many bytes; with ``fused_backward`` freed as they are used (taken as 2% in flight);
- ``ema_decay``: an fp32 copy of the trained weights, unless ``ema_on_cpu``;
- optimizer state: AdamW two moments in the weights' dtype, AdamW8bit 2 bytes; Adafactor (transformers') its
  factored second moments in fp32, counted from the weights' shapes (:func:`adafactor_state`): a matrix keeps a row
  and a column, but a convolution's kernel [out, in, k, k] is factored over its last two dimensions only, so it
  keeps 2·out·in·k numbers — 2/3 of a 3x3 kernel, twice a 1x1's. SD1's UNet, mostly convolutions, thus holds 1.7
  GiB of Adafactor state (0.53 numbers a weight), SD2's 1.5, SDXL's (mostly attention) 0.9;
- the optimizer step's temporaries: AdamW one weights-sized buffer; Adafactor steps a weight at a time, so a few
  fp32 buffers the size of the largest weight (SD's 29.5M-weight convolution: three, ~340 MiB; two more, fp32
  copies of the weight and its gradient, with bf16 weights); AdamW8bit and any fused step ~0;
- autocast's fp16/bf16 copies of fp32 weights during forward and backward (2 bytes per weight);
- frozen parts left on the device: the text encoder(s) unless prompts are cached, the VAE unless offloaded;
- activations: ~1.7 GiB per image at 512 px for SD1 in fp16 (twice in fp32), 0.3 of it with checkpointing, scaling
  with the pixel count; SDXL ~1.0 GiB per 512 px image (it has no attention at its largest latent size; from its
  1024 px measurement once Adafactor's state is counted).
The backward pass frees the activations (and autocast's copies) as the gradients fill up, so that phase peaks at
the larger of the two (both, with gradient accumulation, whose gradients outlive the pass). The peak is the larger
of that phase and the optimizer step."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import mention
from .config import DreamBoothConfig

MIB = 2 ** 20
ACTIVATIONS_MIB_512 = {"sd1": 1700.0, "sd2": 1700.0, "sdxl": 1000.0}  # one image, fp16, no checkpointing
CHECKPOINTED = 0.3
FUSED_IN_FLIGHT = 0.02
LARGEST_WEIGHT = 29_491_200  # SD1's, SD2's and SDXL's largest weight: a 3x3 convolution 2560 -> 1280
#: Adafactor's second-moment numbers per weight in the published models (UNet, text encoders), for a size given
#: as bare parameter counts: SD1 457.6M for its 859.5M-weight UNet, SD2 408.1M / 865.9M, SDXL 244.3M / 2567.5M
ADAFACTOR_PER_WEIGHT = {"sd1": (0.5324, 0.0027), "sd2": (0.4713, 0.0023), "sdxl": (0.0952, 0.0020)}


def adafactor_state(modules) -> int:
    """How many numbers transformers' Adafactor keeps for the weights of ``modules``: for a weight of two or more
    dimensions the means of its squared gradient over the last and over the second-to-last dimension (shapes
    ``shape[:-1]`` and ``shape[:-2] + shape[-1:]``), for a vector one number per weight; and each weight's RMS."""
    import math

    total = 0
    for m in modules:
        for p in m.parameters():
            shape = list(p.shape)
            total += 1 + ((math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])) if len(shape) >= 2
                          else p.numel())
    return total


@dataclass(frozen=True)
class ModelSize:
    unet: int
    text: int  # all text encoders together
    vae: int
    family: str = "sd1"
    #: Adafactor's state in numbers (:func:`adafactor_state`); None: as the published model of ``family``
    unet_adafactor: int | None = None
    text_adafactor: int | None = None

    @classmethod
    def of(cls, host) -> "ModelSize":
        count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
        trainable = host.trainable_modules(True)
        return cls(count(trainable[:1]), count(trainable[1:]), count([host.vae_module()]), host.family.name,
                   adafactor_state(trainable[:1]), adafactor_state(trainable[1:]))

    def adafactor(self, text: bool) -> int:
        """Adafactor's state in numbers for the UNet and, with ``text``, the text encoders."""
        unet_ratio, text_ratio = ADAFACTOR_PER_WEIGHT.get(self.family, ADAFACTOR_PER_WEIGHT["sd1"])
        unet = self.unet_adafactor if self.unet_adafactor is not None else round(self.unet * unet_ratio)
        if not text:
            return unet
        return unet + (self.text_adafactor if self.text_adafactor is not None else round(self.text * text_ratio))


@dataclass
class Estimate:
    parts: dict[str, float]  # MiB
    peak_mib: float

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v / 1024:.1f}" for k, v in self.parts.items() if v >= 1)
        return f"estimated peak {self.peak_mib / 1024:.1f} GiB ({shown})"


def estimate(cfg: DreamBoothConfig, size: ModelSize, resolution: int, frozen_bytes: int = 2) -> Estimate:
    trained = size.unet + (size.text if cfg.train_text_encoder else 0)
    w = 2 if cfg.master_weights == "bf16" else 4
    mixed = w == 4 and cfg.precision in ("fp16", "bf16", "auto")
    state_mib = (size.adafactor(cfg.train_text_encoder) * 4 / MIB if cfg.optimizer == "adafactor"
                 else trained * {"adamw": 2 * w, "adamw8bit": 2}[cfg.optimizer] / MIB)
    # fused: freed as used, except that accumulation holds them until the last micro-batch's backward pass
    in_flight = FUSED_IN_FLIGHT if cfg.fused_backward and cfg.grad_accum == 1 else 1.0
    gradients = trained * w / MIB * in_flight
    parts = {"weights": trained * w / MIB, "gradients": gradients, "optimizer": state_mib,
             "EMA": trained * 4 / MIB if cfg.ema_decay and not cfg.ema_on_cpu else 0.0}
    adafactor_step = (3 if w == 4 else 5) * LARGEST_WEIGHT * 4 / MIB
    step_mib = 0.0 if cfg.fused_backward else {"adamw": trained * w / MIB, "adafactor": adafactor_step}.get(
        cfg.optimizer, 0.0)
    autocast = trained * 2 / MIB if mixed else 0.0
    cached = cfg.cache_text and not (cfg.shuffle_tags or cfg.tag_dropout or cfg.pivotal_vectors)
    frozen_text = 0 if (cfg.train_text_encoder or cached) else size.text * frozen_bytes / MIB
    frozen_vae = 0 if cfg.offload_vae else size.vae * frozen_bytes / MIB
    rows = cfg.batch_size * (2 if cfg.class_data or cfg.concepts else 1)
    act = (ACTIVATIONS_MIB_512.get(size.family, ACTIVATIONS_MIB_512["sd1"]) * rows * (resolution / 512) ** 2
           * (CHECKPOINTED if cfg.gradient_checkpointing else 1.0) * (1.0 if (mixed or w == 2) else 2.0))
    parts.update({"autocast copies": autocast, "step temporaries": step_mib,
                  "frozen text encoders": frozen_text, "frozen VAE": frozen_vae, "activations": act})
    without_gradients = parts["weights"] + parts["optimizer"] + parts["EMA"] + frozen_text + frozen_vae
    if cfg.grad_accum > 1:
        backward = without_gradients + gradients + autocast + act
    else:
        backward = without_gradients + max(gradients, autocast + act)
    step = without_gradients + gradients + parts["step temporaries"]
    return Estimate(parts, max(backward, step))


#: what to switch on, in order, until a run fits (each is a DreamBoothConfig change)
STEPS = (("gradient_checkpointing", True, mention("gradient_checkpointing", True)),
         ("cache_text", True, mention("cache_text", True)),
         ("optimizer", "adafactor", mention("optimizer", "adafactor") + " (or adamw8bit with bitsandbytes)"),
         ("fused_backward", True, mention("fused_backward", True)),
         ("master_weights", "bf16", mention("master_weights", "bf16")))


def _switched(cfg: DreamBoothConfig, field: str, value) -> DreamBoothConfig | None:
    """``cfg`` with ``field`` set, or None where the options refuse the combination (fused backward with norm
    clipping)."""
    try:
        return dataclasses.replace(cfg, **{field: value})
    except ValueError:
        return None


def advise(cfg: DreamBoothConfig, size: ModelSize, resolution: int, budget_gib: float) -> tuple[Estimate, list[str]]:
    """The estimate of ``cfg`` and the options to switch on until it fits ``budget_gib`` (each time the first of
    STEPS that lowers the peak: checkpointing is no help while the optimizer step is the peak); then halving the
    batch (with more accumulation) and a lower resolution."""
    now = estimate(cfg, size, resolution)
    advice, trial, pending = [], cfg, [s for s in STEPS if getattr(cfg, s[0]) != s[1]]
    while estimate(trial, size, resolution).peak_mib > budget_gib * 1024:
        peak = estimate(trial, size, resolution).peak_mib
        lower = [(s, t) for s in pending if (t := _switched(trial, *s[:2])) is not None
                 and estimate(t, size, resolution).peak_mib < peak]
        if not lower:
            break
        (field, value, flag), trial = lower[0]
        pending.remove((field, value, flag))
        advice.append(f"{flag} -> {estimate(trial, size, resolution).peak_mib / 1024:.1f} GiB")
    while estimate(trial, size, resolution).peak_mib > budget_gib * 1024 and trial.batch_size > 1:
        trial = dataclasses.replace(trial, batch_size=trial.batch_size // 2, grad_accum=trial.grad_accum * 2)
        advice.append(f"{mention('batch_size', trial.batch_size)} {mention('grad_accum', trial.grad_accum)} -> "
                      f"{estimate(trial, size, resolution).peak_mib / 1024:.1f} GiB")
    if estimate(trial, size, resolution).peak_mib > budget_gib * 1024:
        advice.append(f"a lower {mention('resolution')} than {resolution} (activations scale with the pixels), or a "
                      f"bigger card")
    return now, advice
