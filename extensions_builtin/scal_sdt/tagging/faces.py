"""Faces for face-centred crops: OpenCV's YuNet when its model file is given (``face_detection_yunet_*.onnx``),
otherwise a Haar/LBP cascade (the frontal-face one that ships inside opencv-python-headless, or any cascade .xml
such as an anime-face one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


class FaceDetector:
    def __init__(self, model: str = "", score: float = 0.7):
        import cv2

        self.cv2 = cv2
        self.score = score
        path = Path(model).expanduser() if model else Path(cv2.data.haarcascades) / DEFAULT_CASCADE
        if not path.is_file():
            raise FileNotFoundError(f"face model {path} does not exist (give a YuNet .onnx or a cascade .xml)")
        self.kind = "yunet" if path.suffix == ".onnx" else "cascade"
        if self.kind == "yunet":
            self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score)
        else:
            self.net = cv2.CascadeClassifier(str(path))
            if self.net.empty():
                raise ValueError(f"{path} is not a cascade OpenCV can read")
        self.name = path.name

    def find(self, rgb: np.ndarray) -> list[tuple[int, int, int, int, float]]:
        """Faces as (x, y, w, h, score), largest first."""
        h, w = rgb.shape[:2]
        if self.kind == "yunet":
            self.net.setInputSize((w, h))
            _, found = self.net.detect(self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2BGR))
            faces = [(int(f[0]), int(f[1]), int(f[2]), int(f[3]), float(f[-1])) for f in (found if found is not None
                                                                                          else [])]
        else:
            grey = self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY)
            side = max(24, min(h, w) // 12)
            found = self.net.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
            faces = [(int(x), int(y), int(fw), int(fh), 1.0) for x, y, fw, fh in found]
        return sorted(faces, key=lambda f: -f[2] * f[3])


def face_crop(image: Image.Image, face: tuple, resolution: int, scale: float = 2.5) -> Image.Image:
    """A square crop centred on ``face`` whose side is ``scale`` times the face's size (smaller when the image is),
    moved inside the image, resized to ``resolution``."""
    w, h = image.size
    x, y, fw, fh = face[:4]
    side = int(min(max(fw, fh) * scale, w, h))
    cx, cy = x + fw / 2, y + fh / 2
    left = int(min(max(cx - side / 2, 0), w - side))
    top = int(min(max(cy - side / 2, 0), h - side))
    crop = image.crop((left, top, left + side, top + side))
    return crop.resize((resolution, resolution), Image.Resampling.LANCZOS) if side != resolution else crop
