"""The discrete DDPM noise schedule and the training targets, as pure functions of alphas_cumprod."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's schedule: betas linear in sqrt space (ldm 'linear' = diffusers 'scaled_linear')."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


@dataclass
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # [T] float32
    prediction_type: str  # 'epsilon' | 'v_prediction'

    def __post_init__(self):
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {self.prediction_type!r}")

    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _coeffs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t].to(torch.float32)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a.sqrt().view(shape), (1 - a).sqrt().view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ·x0 + √(1−ᾱ)·ε."""
        sa, s1a = self._coeffs(t, x0)
        return (sa * x0 + s1a * noise).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model should predict: ε, or v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho 2022)."""
        if self.prediction_type == "epsilon":
            return noise
        sa, s1a = self._coeffs(t, x0)
        return sa * noise - s1a * x0

    def split(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, ε) predicted from the model output at x_t."""
        sa, s1a = self._coeffs(t, x_t)
        output = output.float()
        x_t = x_t.float()
        if self.prediction_type == "epsilon":
            eps = output
            x0 = (x_t - s1a * eps) / sa
        else:
            x0 = sa * x_t - s1a * output
            eps = s1a * x_t + sa * output
        return x0, eps
