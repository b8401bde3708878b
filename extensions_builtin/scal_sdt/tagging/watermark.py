"""A watermark classifier the user has, as ONNX: NCHW RGB with ImageNet mean/std at the size the model declares;
its output is one watermark score (a probability, or a logit when outside [0, 1]) or two classes
[clean, watermark] (softmax)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .families import Preprocess
from .preprocess import prepare

IMAGENET = Preprocess(layout="NCHW", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      default_size=224)


class WatermarkClassifier:
    def __init__(self, model: str):
        import onnxruntime as ort

        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"watermark model {path} does not exist (an ONNX image classifier)")
        self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.side = inp.shape[2] if isinstance(inp.shape[2], int) else IMAGENET.default_size
        self.name = path.name

    def prepare(self, image: Image.Image) -> np.ndarray:
        return prepare(image, self.side, IMAGENET)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: rows})[0].reshape(len(rows), -1).astype(np.float64)
        if out.shape[1] == 2:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            return e[:, 1] / e.sum(axis=1)
        s = out[:, 0]
        return s if (s.min() >= 0 and s.max() <= 1) else 1 / (1 + np.exp(-s))
