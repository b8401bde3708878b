"""The diffusion objective every trainer and the validation loss share (k-diffusion's ``Denoiser.loss``): how a clean
latent is noised, what the model must predict, and how the error is weighed — masks, per-image weights, the
timestep weighting (min-SNR, debiased estimation) and the loss function (MSE, pseudo-Huber, smooth L1).

Every knob is a field of :class:`~.options.TrainingOptions`, off by default; with all of them off the loss is the
masked mean squared error against the schedule's target, drawn from the job's generator in the same order as before
(noise, then timesteps), so results are bit-identical to the trainers' earlier code. The formulas follow kohya's
sd-scripts (``library/custom_train_functions.py``) and the diffusers training scripts; each is a small named
function here and is tested against its formula (``tests/test_objective.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..host.schedule import NoiseSchedule

if TYPE_CHECKING:  # options.py takes its choices from here
    from .options import TrainingOptions

LOSSES = ("mse", "huber", "smooth-l1")
TIMESTEP_DISTRIBUTIONS = ("uniform", "logit-normal")


def parse_timestep_range(text: str, num_steps: int = 1000) -> tuple[int, int]:
    """``"200,800"`` -> (200, 800): timesteps drawn from LO up to, not including, HI (kohya's min/max_timestep);
    ``""`` -> the whole schedule."""
    if not text.strip():
        return 0, num_steps
    try:
        lo, hi = (int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"timestep_range {text!r}: give LO,HI, e.g. 200,800") from None
    if not 0 <= lo < hi <= num_steps:
        raise ValueError(f"timestep_range {text!r}: need 0 <= LO < HI <= {num_steps}")
    return lo, hi


def snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ/(1−ᾱ) of each timestep."""
    a = schedule.alphas_cumprod.to(t.device)[t].float()
    return a / (1 - a)


def min_snr_weights(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): each timestep's loss weighted by min(SNR, γ) / SNR (ε) or / (SNR + 1) (v)."""
    s = snr(schedule, t)
    return s.clamp(max=gamma) / (s + 1 if schedule.prediction_type == "v_prediction" else s)


def debiased_weights(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2023, kohya's --debiased_estimation_loss): 1/√SNR for ε, 1/(SNR + 1) for v;
    SNR capped at 1000 (t = 0) as kohya does."""
    s = snr(schedule, t).clamp(max=1000.0)
    return 1 / (s + 1) if schedule.prediction_type == "v_prediction" else 1 / s.sqrt()


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", huber_c: float = 0.1) -> torch.Tensor:
    """The error per element: (p − y)²; kohya's pseudo-Huber ``huber`` 2c(√((p − y)² + c²) − c), which is (p − y)²
    for |p − y| ≪ c and 2c|p − y| for |p − y| ≫ c; or ``smooth-l1`` 2(√((p − y)² + c²) − c), the same divided by c."""
    d2 = (pred.float() - target.float()) ** 2
    if kind == "mse":
        return d2
    # √(d² + c²) − c written as d² / (√(d² + c²) + c): the same value, without float32's cancellation at large c
    root_minus_c = d2 / (torch.sqrt(d2 + huber_c ** 2) + huber_c)
    if kind == "huber":
        return 2 * huber_c * root_minus_c
    if kind == "smooth-l1":
        return 2 * root_minus_c
    raise ValueError(f"loss {kind!r}: choose one of {', '.join(LOSSES)}")


def offset_noise(shape, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Offset noise (crosslabs, 2023): one random value per image and channel, times ``strength``."""
    return strength * torch.randn((*shape[:2], 1, 1), generator=generator)


def multires_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Pyramid noise (kohya's ``pyramid_noise_like``, after Whitaker 2023): for i = 0 .. iterations − 1, noise at a
    scale r^i smaller (r drawn in [2, 4)), upsampled and weighted discount^i, is added; then the sum is scaled back
    to unit standard deviation."""
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator)) * 2 + 2
        hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
        coarse = torch.randn((b, c, hn, wn), generator=generator)
        out = out + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * discount ** i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def logit_normal(n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """u = sigmoid(N(mean, std)) in (0, 1): more mass at the middle timesteps (Esser et al. 2024, SD3)."""
    return torch.sigmoid(mean + std * torch.randn((n,), generator=generator))


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 (diffusers' ``rescale_zero_terminal_snr``): √ᾱ shifted and scaled so the last timestep is
    pure noise (SNR 0) and the first keeps its value."""
    s = alphas_cumprod.double().sqrt()
    first, last = s[0].clone(), s[-1].clone()
    s = (s - last) * first / (first - last)
    return (s ** 2).to(alphas_cumprod.dtype)


@dataclass
class NoisedBatch:
    batch: object  # a dataset Batch: captions, and the loss weights (masks [B, 1, h, w], image_weights [B])
    x0: torch.Tensor
    noise: torch.Tensor  # what the target is made of
    t: torch.Tensor
    x_t: torch.Tensor  # x0 noised to t (with input perturbation: by a perturbed copy of ``noise``)
    size: tuple[int, int]  # (height, width) in pixels


@dataclass(frozen=True)
class Objective:
    schedule: NoiseSchedule
    loss: str = "mse"
    huber_c: float = 0.1
    min_snr_gamma: float = 0.0
    debiased_estimation: bool = False
    noise_offset: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    timestep_range: tuple[int, int] | None = None
    timestep_distribution: str = "uniform"
    input_perturbation: float = 0.0

    KNOBS = ("loss", "huber_c", "min_snr_gamma", "debiased_estimation", "noise_offset", "multires_noise_iterations",
             "multires_noise_discount", "timestep_distribution", "input_perturbation")

    @classmethod
    def of(cls, opts: "TrainingOptions", schedule: NoiseSchedule) -> "Objective":
        """The objective a run's options (its group "objective") ask for, on the model's schedule (its prediction
        type: ε or v)."""
        if opts.zero_terminal_snr:
            if schedule.prediction_type != "v_prediction":
                raise ValueError("zero_terminal_snr needs a v-prediction model (at SNR 0 an ε model has nothing to "
                                 "predict); this model predicts ε")
            schedule = replace(schedule, alphas_cumprod=zero_terminal_snr(schedule.alphas_cumprod))
        knobs = {k: getattr(opts, k) for k in cls.KNOBS}
        rng = parse_timestep_range(opts.timestep_range, schedule.num_steps)
        return cls(schedule, timestep_range=None if rng == (0, schedule.num_steps) else rng, **knobs)

    # -- noising -----------------------------------------------------------------------------------------------
    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        lo, hi = self.timestep_range or (0, self.schedule.num_steps)
        if self.timestep_distribution == "logit-normal":
            u = logit_normal(n, generator)
            return (lo + (u * (hi - lo)).long()).clamp(max=hi - 1)
        return torch.randint(lo, hi, (n,), generator=generator)

    def noised(self, batch, generator: torch.Generator, device, latent_factor: int = 8) -> NoisedBatch:
        """``batch`` noised with draws from ``generator`` (on the CPU, so a run is the same on every device):
        the noise (with its offset and pyramid), the timesteps, then the input perturbation."""
        x0 = batch.latents.to(device, torch.float32)
        noise = torch.randn(x0.shape, generator=generator)
        if self.noise_offset:
            noise = noise + offset_noise(x0.shape, self.noise_offset, generator)
        if self.multires_noise_iterations:
            noise = multires_noise(noise, generator, self.multires_noise_iterations, self.multires_noise_discount)
        t = self.timesteps(x0.shape[0], generator).to(device)
        noised_with = noise
        if self.input_perturbation:  # Ning et al. 2023: noise the input a little more than the target says
            noised_with = noise + self.input_perturbation * torch.randn(noise.shape, generator=generator)
        noise, noised_with = noise.to(device), noised_with.to(device)
        size = (x0.shape[-2] * latent_factor, x0.shape[-1] * latent_factor)
        return NoisedBatch(batch, x0, noise, t, self.schedule.add_noise(x0, noised_with, t), size)

    # -- the loss ----------------------------------------------------------------------------------------------
    def error(self, nb: NoisedBatch, out: torch.Tensor) -> torch.Tensor:
        """The loss per element against the schedule's target (ε or v)."""
        return elementwise_loss(out, self.schedule.target(nb.x0, nb.noise, nb.t), self.loss, self.huber_c)

    def timestep_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        w = None
        if self.min_snr_gamma:
            w = min_snr_weights(self.schedule, t, self.min_snr_gamma)
        if self.debiased_estimation:
            d = debiased_weights(self.schedule, t)
            w = d if w is None else w * d
        return w

    def image_losses(self, nb: NoisedBatch, out: torch.Tensor) -> torch.Tensor:
        """The loss per image [B]: each image's (masked) mean."""
        err = self.error(nb, out)
        dims = tuple(range(1, err.dim()))
        masks = getattr(nb.batch, "weights", None)
        if masks is not None:
            w = masks.to(err.device, err.dtype).expand_as(err)
            return (err * w).sum(dims) / w.sum(dims).clamp_min(1e-8)
        return err.mean(dims)

    def __call__(self, nb: NoisedBatch, out: torch.Tensor) -> torch.Tensor:
        """The batch's loss: the mean of the per-image losses times their weights (timestep weighting, the image's
        folder or concept weight) — or, with neither, the mask-weighted mean over the whole batch as before."""
        w = self.timestep_weights(nb.t)
        image_weights = getattr(nb.batch, "image_weights", None)
        if image_weights is not None:
            image_weights = image_weights.to(nb.t.device, torch.float32)
            w = image_weights if w is None else w * image_weights
        if w is not None:
            return (self.image_losses(nb, out) * w).mean()
        err = self.error(nb, out)
        masks = getattr(nb.batch, "weights", None)
        if masks is not None:
            m = masks.to(err.device, err.dtype)
            return (err * m).sum() / (m.sum() * err.shape[1]).clamp_min(1e-8)
        return err.mean()

    # -- validation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def heldout(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                masks: torch.Tensor | None = None, timesteps: tuple[int, ...] = (100, 300, 500, 700, 900),
                seed: int = 1234) -> float:
        """The same loss (masks, weights and loss function) at fixed timesteps and noises from ``seed``:
        ``model(x_t, t)`` is the prediction. No offset, pyramid or perturbation: a number comparable between
        steps and runs."""
        from types import SimpleNamespace

        gen = torch.Generator("cpu").manual_seed(seed)
        plain = replace(self, noise_offset=0.0, multires_noise_iterations=0, input_perturbation=0.0)
        batch = SimpleNamespace(weights=masks, image_weights=None)
        total = 0.0
        for t_value in timesteps:
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            t = torch.full((x0.shape[0],), t_value, dtype=torch.long, device=x0.device)
            x_t = self.schedule.add_noise(x0, noise, t)
            nb = NoisedBatch(batch, x0, noise, t, x_t, (0, 0))
            total += float(plain(nb, model(x_t, t)))
        return total / len(timesteps)


def knob_summary(objective: Objective) -> str:
    """The knobs that are not at their defaults, for the run's start message ('' when none)."""
    default = Objective(objective.schedule)
    parts = [f"{k}={getattr(objective, k)}" for k in Objective.KNOBS + ("timestep_range",)
             if getattr(objective, k) != getattr(default, k)]
    return ", ".join(parts)

