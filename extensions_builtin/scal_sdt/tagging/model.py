"""An ONNX tagger loaded once: its family, tags, input side, batch limits and the execution provider in use.

``--model`` may be a folder (or its .onnx file), ``toy`` (the toy world's tagger), or a Hugging Face repo id /
known short name found in the user's hub cache (never downloaded here)."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .families import Family, Labels, detect_family, read_labels

#: the order providers are preferred in when the user leaves the choice to us
PROVIDER_ORDER = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
                  "CoreMLExecutionProvider", "CPUExecutionProvider")
PROVIDER_WORDS = {"cuda": "CUDAExecutionProvider", "rocm": "ROCMExecutionProvider", "directml": "DmlExecutionProvider",
                  "coreml": "CoreMLExecutionProvider", "cpu": "CPUExecutionProvider"}
TOY_TAGGER = "toy"


@dataclass(frozen=True)
class Known:
    repo: str
    general: float  # the authors' published P=R threshold for general tags
    character: float = 0.85


#: short name -> hub repo and the thresholds its model card publishes
KNOWN: dict[str, Known] = {k.repo.split("/")[1]: k for k in (
    Known("SmilingWolf/wd-eva02-large-tagger-v3", 0.5296),
    Known("SmilingWolf/wd-vit-large-tagger-v3", 0.2606),
    Known("SmilingWolf/wd-vit-tagger-v3", 0.2614),
    Known("SmilingWolf/wd-swinv2-tagger-v3", 0.2653),
    Known("SmilingWolf/wd-convnext-tagger-v3", 0.2682),
    Known("SmilingWolf/wd-v1-4-moat-tagger-v2", 0.3771),
    Known("SmilingWolf/wd-v1-4-swinv2-tagger-v2", 0.3685),
    Known("SmilingWolf/wd-v1-4-convnext-tagger-v2", 0.3685),
    Known("SmilingWolf/wd-v1-4-convnextv2-tagger-v2", 0.3710),
    Known("SmilingWolf/wd-v1-4-vit-tagger-v2", 0.3537),
)}


def toy_tagger_folder() -> Path:
    return Path(__file__).resolve().parent.parent / "toy_world" / "pretrained" / "toy-tagger"


def known_for(model: str) -> Known | None:
    name = model.rstrip("/").split("/")[-1]
    return KNOWN.get(name)


def resolve_model(model: str) -> Path:
    """The folder holding the model's .onnx and tag list."""
    if model == TOY_TAGGER:
        return toy_tagger_folder()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".onnx":
        return path.parent
    if path.is_dir():
        return path
    known = known_for(model)
    repo = known.repo if known and "/" not in model else model
    if repo.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo, local_files_only=True))
        except Exception:
            pass
    hint = f"huggingface-cli download {repo}" if repo.count("/") == 1 else "give the folder with model.onnx"
    raise FileNotFoundError(f"tagger {model!r} is neither a folder nor in the Hugging Face cache; get it with: {hint} "
                            f"(known names: {', '.join(KNOWN)}, or 'toy')")


def onnx_file(folder: Path) -> Path:
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected model.onnx or exactly one .onnx file, found "
                                f"{', '.join(p.name for p in found) or 'none'}")
    return found[0]


def model_key(model_path: Path, tags_path: Path) -> str:
    """Identity of a model for the result cache: its tags and the size, head and tail of its weights."""
    h = hashlib.sha1(tags_path.read_bytes())
    size = model_path.stat().st_size
    h.update(str(size).encode())
    with open(model_path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


def choose_providers(asked: str = "auto") -> list[str]:
    """The providers to ask onnxruntime for: the one asked for (refused by name when this onnxruntime lacks it),
    or every available one in :data:`PROVIDER_ORDER`."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if asked in ("", "auto"):
        return [p for p in PROVIDER_ORDER if p in available] or available
    wanted = PROVIDER_WORDS.get(asked.lower(), asked)
    if wanted not in available:
        raise ValueError(f"execution provider {asked!r} is not in this onnxruntime (it has: {', '.join(available)}); "
                         f"for CUDA install onnxruntime-gpu, for DirectML onnxruntime-directml")
    return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])


class Tagger:
    def __init__(self, model: str, provider: str = "auto", threads: int = 0):
        import onnxruntime as ort

        self.folder = resolve_model(model)
        self.name = model
        self.family: Family = detect_family(self.folder)
        self.labels: Labels = read_labels(self.folder, self.family)
        self.path = onnx_file(self.folder)
        self.key = model_key(self.path, self.folder / self.family.tags_file)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=choose_providers(provider))
        self.provider = self.session.get_providers()[0]
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        shape = list(inp.shape)
        spatial = shape[1:3] if self.family.preprocess.layout == "NHWC" else shape[2:4]
        self.side = spatial[0] if isinstance(spatial[0], int) else self.family.preprocess.default_size
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        n_out = out.shape[-1]
        if isinstance(n_out, int) and n_out != len(self.labels.names):
            raise ValueError(f"{self.path.name} gives {n_out} scores but {self.family.tags_file} lists "
                             f"{len(self.labels.names)} tags")
        self.last_used = time.time()

    def describe(self) -> str:
        batch = f"fixed batch {self.fixed_batch}" if self.fixed_batch else "any batch"
        return (f"{self.path} ({self.family.name}, {self.side}px, {len(self.labels.names)} tags, {batch}) on "
                f"{self.provider}")

    def run(self, rows: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] for a stack of prepared rows; a fixed-batch model gets chunks of its size, the last one
        padded and its padding sliced off."""
        self.last_used = time.time()
        n = len(rows)
        if self.fixed_batch:
            b = self.fixed_batch
            outs = []
            for i in range(0, n, b):
                chunk = rows[i:i + b]
                if len(chunk) < b:
                    chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)])
                outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:n - i])
            scores = np.concatenate(outs)
        else:
            scores = self.session.run([self.output_name], {self.input_name: rows})[0]
        scores = scores.reshape(n, -1).astype(np.float32)
        if self.family.outputs_logits:
            scores = 1.0 / (1.0 + np.exp(-scores))
        return scores


class TaggerPool:
    """Loaded taggers, reused across runs; unloaded on request or after ``idle_seconds`` without use."""

    def __init__(self, idle_seconds: float = 600.0):
        self.idle_seconds = idle_seconds
        self._taggers: dict[tuple, Tagger] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def get(self, model: str, provider: str = "auto", threads: int = 0) -> Tagger:
        key = (str(resolve_model(model)), provider, threads)
        with self._lock:
            if key not in self._taggers:
                self._taggers[key] = Tagger(model, provider, threads)
            tagger = self._taggers[key]
            tagger.last_used = time.time()
            if self._watcher is None and self.idle_seconds > 0:
                self._watcher = threading.Thread(target=self._watch, daemon=True, name="scal-sdt-tagger-idle")
                self._watcher.start()
            return tagger

    def loaded(self) -> list[str]:
        return [t.describe() for t in self._taggers.values()]

    def unload(self, older_than: float = 0.0) -> int:
        now = time.time()
        with self._lock:
            gone = [k for k, t in self._taggers.items() if now - t.last_used >= older_than]
            for k in gone:
                del self._taggers[k]
        return len(gone)

    def _watch(self):
        while True:
            time.sleep(min(60.0, self.idle_seconds / 4))
            self.unload(older_than=self.idle_seconds)


POOL = TaggerPool()
