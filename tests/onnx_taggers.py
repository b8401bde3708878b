"""Tiny ONNX taggers built in code with the real input/output signatures of each family, for the tagger tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ConstantScores(nn.Module):
    """Gives the same scores for every image (after a term that keeps the input in the graph); ``logits`` returns
    the raw values for families whose model ends before the sigmoid."""

    def __init__(self, scores, nchw: bool, logits: bool):
        super().__init__()
        p = torch.as_tensor(scores, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        self.register_buffer("value", torch.log(p / (1 - p)) if logits else p)
        self.nchw = nchw

    def forward(self, x):
        keep = x.mean(dim=(1, 2, 3), keepdim=False)[:, None] * 0.0
        return self.value[None, :] + keep


class MeanColour(nn.Module):
    """Scores = the image's mean channel values (in the model's own input scale), one per channel, so a test can
    see exactly what the model was given."""

    def __init__(self, nchw: bool):
        super().__init__()
        self.nchw = nchw

    def forward(self, x):
        return x.mean(dim=(2, 3)) if self.nchw else x.mean(dim=(1, 2))


def export(module: nn.Module, path: Path, input_name: str, output_name: str, side: int, nchw: bool,
           batch: int | None = None) -> Path:
    """``batch`` None = dynamic batch; an int = a model with that fixed batch."""
    shape = (batch or 1, 3, side, side) if nchw else (batch or 1, side, side, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = None if batch else {input_name: {0: "batch"}, output_name: {0: "batch"}}
    torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), input_names=[input_name],
                      output_names=[output_name], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def wd14_folder(folder: Path, names: list[str], categories: list[int], scores, side: int = 32,
                batch: int | None = None) -> Path:
    export(ConstantScores(scores, nchw=False, logits=False), folder / "model.onnx", "input_1:0",
           "predictions_sigmoid", side, nchw=False, batch=batch)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (n, c) in enumerate(zip(names, categories)):
            w.writerow([i, n, c, 100])
    return folder


def deepdanbooru_folder(folder: Path, names: list[str], scores, characters=(), side: int = 32) -> Path:
    export(ConstantScores(scores, nchw=False, logits=False), folder / "deepdanbooru.onnx", "input_1", "output",
           side, nchw=False)
    (folder / "tags.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (folder / "tags-character.txt").write_text("\n".join(characters) + "\n", encoding="utf-8")
    return folder


def tag_mapping_folder(folder: Path, names: list[str], categories: list[str], scores, side: int = 32) -> Path:
    export(ConstantScores(scores, nchw=True, logits=True), folder / "model.onnx", "pixel_values", "logits", side,
           nchw=True)
    mapping = {"idx_to_tag": {str(i): n for i, n in enumerate(names)},
               "tag_to_category": dict(zip(names, categories))}
    (folder / "tag_mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    return folder


def probe_folder(folder: Path, family_file: str, nchw: bool, side: int = 16, input_name: str = "input_1:0") -> Path:
    """A 'tagger' whose 3 scores are the mean of each input channel: shows what preprocessing gave the model."""
    export(MeanColour(nchw), folder / "model.onnx", input_name, "out", side, nchw=nchw)
    if family_file == "selected_tags.csv":
        (folder / family_file).write_text("tag_id,name,category,count\n0,c0,0,1\n1,c1,0,1\n2,c2,0,1\n")
    elif family_file == "tag_mapping.json":
        (folder / family_file).write_text(json.dumps({"idx_to_tag": {"0": "c0", "1": "c1", "2": "c2"}}))
    else:
        (folder / family_file).write_text("c0\nc1\nc2\n")
    return folder


def reference_wd14_prepare(image, target_size: int) -> np.ndarray:
    """SmilingWolf's wd-tagger demo (app.py, ``Predictor.prepare_image``), as published, for one image."""
    from PIL import Image

    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    max_dim = max(image.size)
    pad_left = (max_dim - image.size[0]) // 2
    pad_top = (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if max_dim != target_size:
        padded = padded.resize((target_size, target_size), Image.BICUBIC)
    arr = np.asarray(padded, dtype=np.float32)
    return arr[:, :, ::-1]
