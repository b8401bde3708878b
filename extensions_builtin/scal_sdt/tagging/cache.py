"""Tagger scores cached by image content and model, so re-tagging a folder (with other thresholds too) skips the
images it has seen. One append-only JSON-lines file per model; a line cut short by a crash is ignored."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

#: scores below this are stored as 0 (they never pass a threshold; MCut's largest gap is far above them)
FLOOR = 0.005


class ScoreCache:
    def __init__(self, folder: str | Path | None, model_key: str, n_tags: int):
        self.n_tags = n_tags
        self.path = Path(folder).expanduser() / f"{model_key}.jsonl" if folder else None
        self._scores: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()
        if self.path and self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self._scores[entry["sha1"]] = {int(k): v for k, v in entry["scores"].items()}
                    except (ValueError, KeyError, TypeError):
                        continue

    def __contains__(self, digest: str) -> bool:
        return digest in self._scores

    def get(self, digest: str) -> np.ndarray:
        out = np.zeros(self.n_tags, dtype=np.float32)
        for i, v in self._scores[digest].items():
            out[i] = v
        return out

    def put(self, digests: list[str], scores: np.ndarray) -> None:
        lines = []
        with self._lock:
            for digest, row in zip(digests, scores):
                idx = np.nonzero(row >= FLOOR)[0]
                sparse = {int(i): round(float(row[i]), 5) for i in idx}
                self._scores[digest] = sparse
                if self.path:
                    lines.append(json.dumps({"sha1": digest, "scores": sparse}, separators=(",", ":")))
            if self.path and lines:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
