"""The toy tagger: a small CNN multi-label classifier over the toy world's booru tags, exported in the WD14
tagger format — ``model.onnx`` with WD14's input/output signature (``input_1:0``: NHWC, BGR, 0-255 float32, its
side read from the session; ``predictions_sigmoid``: one probability per CSV row) and ``selected_tags.csv``
(``tag_id,name,category,count``; the 4 rating rows first, category 9; general tags category 0)."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..files import atomic_path, atomic_write_text
from .optim import conv_features, pooled
from .pool import ScenePool, mirrored
from .world import COLOURS, SHAPES, TEXTURE_TAGS, caption_tags

RATINGS = ("general", "sensitive", "questionable", "explicit")
POSITIONS = ("top_left", "top", "top_right", "left", "centre", "right", "bottom_left", "bottom", "bottom_right")
INPUT_NAME = "input_1:0"
OUTPUT_NAME = "predictions_sigmoid"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING_CATEGORY, GENERAL_CATEGORY = 9, 0


def general_tags() -> list[str]:
    """Every tag :func:`.world.caption_tags` can write, in a fixed order."""
    tags = [f"{c}_{s}" for s in SHAPES for c in COLOURS] + list(SHAPES) + list(COLOURS)
    tags += [f"{c}_background" for c in COLOURS] + ["small", "medium", "large"] + list(POSITIONS)
    tags += list(TEXTURE_TAGS.values()) + ["simple_background"]
    return tags


class TaggerNet(nn.Module):
    """Strided conv blocks, global average + max pooling, one logit per tag (ratings included)."""

    def __init__(self, n_tags: int, width: int = 32):
        super().__init__()
        self.features, out = conv_features(width)
        self.head = nn.Linear(out * 2, n_tags)

    def forward(self, x):  # x: NCHW RGB in [-1, 1]
        return self.head(pooled(self.features(x)))


class WD14Signature(nn.Module):
    """WD14's interface around the net: NHWC BGR 0-255 in, sigmoid probabilities out."""

    def __init__(self, net: TaggerNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).flip(1) / 127.5 - 1.0
        return torch.sigmoid(self.net(x))


def targets(scenes, tags: list[str]) -> torch.Tensor:
    index = {t: i for i, t in enumerate(tags)}
    y = torch.zeros(len(scenes), len(tags))
    for row, scene in enumerate(scenes):
        y[row, index["general"]] = 1.0  # the toy world is all-ages
        for tag in caption_tags(scene).split(", "):
            y[row, index[tag]] = 1.0
    return y


def train_tagger(pool: ScenePool, steps: int, seed: int, batch_size: int = 64, lr: float = 4e-3, log=None):
    """Train on ``pool`` (all concepts) with flips; returns ``(net, tags)``, ``tags`` in CSV order."""
    tags = list(RATINGS) + general_tags()
    torch.manual_seed(seed)
    net = TaggerNet(len(tags))
    y_plain = targets(pool.scenes, tags)
    y_flip = targets([mirrored(s) for s in pool.scenes], tags)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
        flips = torch.rand(batch_size, generator=gen) < 0.5
        y = torch.where(flips[:, None], y_flip[idx], y_plain[idx])
        loss = F.binary_cross_entropy_with_logits(net(pool.batch(idx, flips)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"tagger step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    return net.eval().requires_grad_(False), tags


def save_tagger(net: TaggerNet, tags: list[str], counts: dict[str, int], folder, px: int = 64) -> Path:
    """``model.onnx`` (batch dimension dynamic) and ``selected_tags.csv`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MODEL_FILE) as tmp:
        torch.onnx.export(WD14Signature(net).eval(), (torch.zeros(1, px, px, 3),), str(tmp), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag_id", "name", "category", "count"])
    for i, tag in enumerate(tags):
        category = RATING_CATEGORY if tag in RATINGS else GENERAL_CATEGORY
        writer.writerow([9_999_000 + i, tag, category, counts.get(tag, 0)])
    atomic_write_text(folder / TAGS_FILE, out.getvalue())
    return folder


def tag_counts(scenes) -> dict[str, int]:
    counts: dict[str, int] = {"general": len(scenes)}
    for scene in scenes:
        for tag in caption_tags(scene).split(", "):
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def onnx_f1(folder, scenes, images, threshold: float = 0.35) -> float:
    """Micro-averaged F1 of the exported tagger's general tags on ``scenes``, read through onnxruntime exactly as
    a WD14 user runs it (``images``: PIL RGB)."""
    import onnxruntime as ort

    folder = Path(folder)
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    with open(folder / TAGS_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = [r["name"] for r in rows]
    general = [i for i, r in enumerate(rows) if int(r["category"]) == GENERAL_CATEGORY]
    x = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32)[:, :, ::-1] for im in images])
    probs = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x)})[0]
    tp = fp = fn = 0
    for scene, p in zip(scenes, probs):
        truth = set(caption_tags(scene).split(", "))
        said = {names[i] for i in general if p[i] >= threshold}
        tp, fp, fn = tp + len(truth & said), fp + len(said - truth), fn + len(truth - said)
    return 2 * tp / max(2 * tp + fp + fn, 1)
