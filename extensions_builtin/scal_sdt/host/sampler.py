"""A small DDIM sampler with classifier-free guidance, for previews outside the WebUI."""
from __future__ import annotations

from typing import Callable

import torch

from .schedule import NoiseSchedule


def ddim_timesteps(num_train_steps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps, highest first (diffusers' 'leading' spacing with offset 1, as SD uses)."""
    stride = num_train_steps // steps
    return [i * stride + 1 for i in range(steps)][::-1]


@torch.no_grad()
def sample_ddim(model: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], schedule: NoiseSchedule,
                x: torch.Tensor, steps: int, cfg_scale: float, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2020, η=0). ``model(x, t, uncond)`` returns the raw model output."""
    ts = ddim_timesteps(schedule.num_steps, steps)
    ac = schedule.alphas_cumprod
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        cond = model(x, tt, False).float()
        if cfg_scale != 1.0:
            uncond = model(x, tt, True).float()
            out = uncond + cfg_scale * (cond - uncond)
        else:
            out = cond
        x0, eps = schedule.split(x, out, tt)
        prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = (prev.sqrt() * x0 + (1 - prev).sqrt() * eps).to(x.dtype)
        if callback is not None:
            callback({"i": i, "t": t, "denoised": x0})
    return x
