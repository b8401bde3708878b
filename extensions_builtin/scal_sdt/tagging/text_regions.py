"""Text in images (signatures, watermarks, speech bubbles): OpenCV's DB or EAST text detector when the user has its
model file, otherwise MSER regions grouped into lines of character-like shapes (no model needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

Box = tuple[int, int, int, int]


def _mser_lines(rgb: np.ndarray) -> list[Box]:
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    mser = cv2.MSER_create(delta=5, min_area=max(8, h * w // 40000), max_area=max(60, h * w // 100))
    _, boxes = mser.detectRegions(grey)
    chars = sorted({(int(x), int(y), int(bw), int(bh)) for x, y, bw, bh in boxes
                    if 6 <= bh <= h * 0.15 and 2 <= bw <= bh * 2.5})
    lines, used = [], [False] * len(chars)
    for i, seed in enumerate(chars):
        if used[i]:
            continue
        line, used[i] = [seed], True
        grew = True
        while grew:  # grow the line with neighbours of similar height on the same baseline
            grew = False
            for j, b in enumerate(chars):
                if used[j]:
                    continue
                for c in line:
                    same_row = abs((b[1] + b[3] / 2) - (c[1] + c[3] / 2)) < 0.5 * max(b[3], c[3])
                    near = b[0] - (c[0] + c[2]) < 1.5 * c[3] and c[0] - (b[0] + b[2]) < 1.5 * c[3]
                    if same_row and near and 0.5 < b[3] / c[3] < 2:
                        line.append(b)
                        used[j] = grew = True
                        break
        glyphs, right = [], -1  # side by side, not overlapping: MSER also finds nested and merged regions
        for b in sorted(line, key=lambda b: (b[0], -b[2])):
            if b[0] >= right:
                glyphs.append(b)
                right = b[0] + b[2]
        widths = np.array([b[2] for b in glyphs], dtype=float)
        if len(widths) < 5 or widths.std() / widths.mean() <= 0.2:  # too few, or all alike (dots, stripes)
            continue
        x0, y0 = min(b[0] for b in line), min(b[1] for b in line)
        x1, y1 = max(b[0] + b[2] for b in line), max(b[1] + b[3] for b in line)
        if x1 - x0 > 2.5 * (y1 - y0):
            lines.append((x0, y0, x1 - x0, y1 - y0))
    return lines


class TextDetector:
    def __init__(self, model: str = "", side: int = 736):
        self.model = None
        self.name = "MSER lines"
        if model:
            import cv2

            path = Path(model).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"text model {path} does not exist (give an OpenCV DB .onnx or EAST .pb)")
            if path.suffix == ".pb":
                self.model = cv2.dnn_TextDetectionModel_EAST(str(path))
                self.model.setConfidenceThreshold(0.5).setNMSThreshold(0.4)
                self.model.setInputParams(1.0, (side // 32 * 32, side // 32 * 32), (123.68, 116.78, 103.94), True)
            else:
                self.model = cv2.dnn_TextDetectionModel_DB(str(path))
                self.model.setBinaryThreshold(0.3).setPolygonThreshold(0.5).setMaxCandidates(200)
                self.model.setInputParams(1.0 / 255, (side // 32 * 32, side // 32 * 32), (122.68, 116.67, 104.01))
            self.name = path.name

    def find(self, rgb: np.ndarray) -> list[Box]:
        if self.model is None:
            return _mser_lines(rgb)
        import cv2

        found = self.model.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[0]
        return [tuple(int(v) for v in cv2.boundingRect(np.asarray(q, dtype=np.int32))) for q in found]


def inpaint(rgb: np.ndarray, boxes: list[Box], pad: int = 3) -> np.ndarray:
    """The image with the boxes filled in from their surroundings (OpenCV's Telea inpainting)."""
    import cv2

    mask = np.zeros(rgb.shape[:2], np.uint8)
    for x, y, w, h in boxes:
        mask[max(0, y - pad):y + h + pad, max(0, x - pad):x + w + pad] = 255
    return cv2.inpaint(rgb, mask, 5, cv2.INPAINT_TELEA)


def area_fraction(boxes: list[Box], shape) -> float:
    return sum(w * h for _, _, w, h in boxes) / float(shape[0] * shape[1])
