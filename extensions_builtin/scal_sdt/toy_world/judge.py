"""A small CNN that judges toy-world images: which shape, which colour.

It is trained on freshly generated scenes of *every* concept (held-out ones included, since it judges
what a personalised model draws) and is used to measure prompt accuracy: generate 'a red circle' and
ask the judge whether it sees red and circle.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..files import save_safetensors
from .optim import conv_features, pooled
from .world import COLOURS, SHAPES, Scene, render, sample_scene

FORMAT = "scal_sdt.toy_world.judge/1"


class JudgeNet(nn.Module):
    """Four strided 3x3 conv blocks (64 -> 4 px), global average + max pooling, two linear heads."""

    def __init__(self, n_shapes: int, n_colours: int, width: int = 32):
        super().__init__()
        self.features, out = conv_features(width)
        self.shape_head = nn.Linear(out * 2, n_shapes)
        self.colour_head = nn.Linear(out * 2, n_colours)

    def forward(self, x):
        h = pooled(self.features(x))
        return self.shape_head(h), self.colour_head(h)


def images_to_tensor(images: list[Image.Image], px: int = 64) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB").resize((px, px), Image.BOX) if im.size != (px, px)
                               else im.convert("RGB"), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    return (x / 127.5) - 1.0


@dataclass
class Judge:
    net: JudgeNet
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    px: int = 64
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, images: list[Image.Image], batch_size: int = 256) -> list[tuple[str, str]]:
        self.net.eval()
        out = []
        for i in range(0, len(images), batch_size):
            s, c = self.net(images_to_tensor(images[i:i + batch_size], self.px))
            out += [(self.shapes[a], self.colours[b]) for a, b in zip(s.argmax(1).tolist(), c.argmax(1).tolist())]
        return out

    def accuracy(self, scenes: list[Scene], images: list[Image.Image] | None = None) -> dict[str, float]:
        """Fraction of ``scenes`` (rendered unless ``images`` are given) whose shape / colour / both it names."""
        images = images if images is not None else [render(s, self.px) for s in scenes]
        pred = self.predict(images)
        n = max(len(scenes), 1)
        return {"shape": sum(p[0] == s.shape for p, s in zip(pred, scenes)) / n,
                "colour": sum(p[1] == s.colour for p, s in zip(pred, scenes)) / n,
                "both": sum(p == (s.shape, s.colour) for p, s in zip(pred, scenes)) / n}

    def save(self, path) -> Path:
        path = Path(path)
        meta = {"format": FORMAT, "shapes": list(self.shapes), "colours": list(self.colours), "px": self.px,
                "width": self.net.features[0].out_channels, "info": self.info}
        save_safetensors({k: v.contiguous() for k, v in self.net.state_dict().items()}, path,
                         metadata={"toy_world_judge": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path) -> "Judge":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("toy_world_judge")
        if raw is None:
            raise ValueError(f"{path} is not a toy-world judge (no 'toy_world_judge' metadata)")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported judge format {meta.get('format')!r}")
        net = JudgeNet(len(meta["shapes"]), len(meta["colours"]), width=meta["width"])
        net.load_state_dict(load_file(str(path)))
        net.eval()
        return cls(net, tuple(meta["shapes"]), tuple(meta["colours"]), meta["px"], meta.get("info", {}))


def untrained_judge(seed: int = 0, width: int = 32) -> Judge:
    torch.manual_seed(seed)
    return Judge(JudgeNet(len(SHAPES), len(COLOURS), width))


def sample_labelled(n: int, seed: int, px: int = 64) -> tuple[list[Scene], list[Image.Image]]:
    """``n`` fresh scenes of every concept (held-out ones included) and their images."""
    rng = random.Random(f"toy-world-judge/{seed}")
    scenes = [sample_scene(rng, allow_held_out=True) for _ in range(n)]
    return scenes, [render(s, px) for s in scenes]


def train_judge(steps: int = 1000, seed: int = 0, batch_size: int = 64, lr: float = 6e-3, width: int = 32,
                px: int = 64, pool: int | None = None, log=None) -> Judge:
    """Train a judge on freshly generated scenes (a pool of ``pool`` images, reused across steps; by default
    enough for about two passes). Deterministic for a given seed and thread count."""
    t0 = time.time()
    judge = untrained_judge(seed, width)
    net = judge.net
    pool = pool or max(batch_size, steps * batch_size // 2)
    scenes, images = sample_labelled(pool, seed, px)
    x_all = images_to_tensor(images, px)
    ys = torch.tensor([SHAPES.index(s.shape) for s in scenes])
    yc = torch.tensor([judge.colours.index(s.colour) for s in scenes])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, pool, (batch_size,), generator=gen)
        x = x_all[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5  # every shape is left-right symmetric
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        s, c = net(x)
        loss = F.cross_entropy(s, ys[idx]) + F.cross_entropy(c, yc[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step} loss {loss.item():.3f}")
    net.eval()
    judge.px = px
    judge.info = {"steps": steps, "seed": seed, "batch_size": batch_size, "pool": pool,
                  "train_seconds": round(time.time() - t0, 1)}
    return judge
