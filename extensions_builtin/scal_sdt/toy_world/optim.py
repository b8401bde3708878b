"""What every toy model's training shares: a linear warm-up then a cosine decay, and the conv feature stack of the
two small image classifiers (judge and tagger)."""
from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of ``steps``, then cosine decay to ``floor`` x the rate."""
    warmup = max(1, steps // 20)

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def conv_features(width: int) -> tuple[nn.Sequential, int]:
    """Four strided 3x3 conv + BatchNorm + ReLU blocks (64 -> 4 px); returns the stack and its output channels."""
    chans = [3, width, width * 2, width * 3, width * 4]
    layers: list[nn.Module] = []
    for a, b in zip(chans, chans[1:]):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), chans[-1]


def pooled(h: torch.Tensor) -> torch.Tensor:
    """Global average and max pooling side by side."""
    return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
