"""Test oracle: how the AUTOMATIC1111 WebUI decides whether it accepts a Textual Inversion embedding file.

Re-implemented in our own words (not copied) from the WebUI sources as stored in the search index:
  * ``modules/safe.py`` of AUTOMATIC1111/stable-diffusion-webui at 05933840 (the v1.8.0 rules, commit bef51aed: the
    zip-name regex without ``byteorder``/``.data/serialization_id``, which A1111 only added after v1.8.0);
  * ``create_embedding_from_data`` / ``EmbeddingDatabase.load_from_file`` of ``textual_inversion.py`` as in v1.8.0
    (the same code is in lllyasviel/stable-diffusion-webui-forge 77a4980f);
  * ``modules/textual_inversion/image_embedding.py`` at aea16953 (PNG chunk and edge-hidden data).
"""
from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import re
import zipfile
import zlib
from typing import Any, NamedTuple

import numpy as np
import safetensors.torch
import torch
from PIL import Image

# ------------------------------------------------------------------------------------------ (a) modules/safe.py
# Zip members a .pt may contain: '<dir>/version', '<dir>/data.pkl' and '<dir>/data/<number>', nothing else.
SAFE_ZIP_NAME = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
DATA_PKL_NAME = re.compile(r"^([^/]+)/data\.pkl$")

# (module, name) pairs the restricted unpickler resolves; any other global makes the file "possibly malicious".
SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                              "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
    ("pytorch_lightning.callbacks", "model_checkpoint"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("__builtin__", "set"),
}


class SafeCheckFailed(Exception):
    """safe.py would report the file and hand back None instead of its content."""


def _resolve(module: str, name: str) -> Any:
    if module == "__builtin__":
        return set
    if module.startswith("pytorch_lightning"):
        return object  # not installed here; only its name matters for the check
    if module == "numpy.core.multiarray":
        mod = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else module)
    else:
        mod = importlib.import_module(module)
    return getattr(mod, name)


class _RestrictedReader(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise SafeCheckFailed(f"persistent id {pid!r} is not a storage")
        return torch.storage.TypedStorage(_internal=True)  # an empty stand-in, as safe.py does

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise SafeCheckFailed(f"global '{module}/{name}' is forbidden")
        return _resolve(module, name)


def check_pt(path: str | os.PathLike) -> None:
    """Raise SafeCheckFailed where the WebUI's safe.py refuses the file."""
    try:
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            # old torch format: five pickles in a row (magic, protocol, sys info, the object, storage keys)
            with open(path, "rb") as f:
                reader = _RestrictedReader(f)
                for _ in range(5):
                    reader.load()
            return
        with archive:
            names = archive.namelist()
            for n in names:
                if not SAFE_ZIP_NAME.match(n):
                    raise SafeCheckFailed(f"bad file inside {path}: {n}")
            pkls = [n for n in names if DATA_PKL_NAME.match(n)]
            if len(pkls) != 1:
                raise SafeCheckFailed(f"{len(pkls)} data.pkl records in {path}")
            with archive.open(pkls[0]) as f:
                _RestrictedReader(f).load()
    except SafeCheckFailed:
        raise
    except Exception as exc:  # safe.py treats every failure (corrupt pickle included) as a refusal
        raise SafeCheckFailed(f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------ image_embedding.py
def lcg_low_nibbles(count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.uint8)
    state = 0
    for i in range(count):
        state = (1664525 * state + 1013904223) % 2**32
        out[i] = (state % 255) & 0x0F
    return out


def _tensor_hook(d: dict) -> Any:
    return torch.from_numpy(np.array(d["TORCHTENSOR"])) if "TORCHTENSOR" in d else d


def decode_chunk(text: str) -> Any:
    return json.loads(base64.b64decode(text), object_hook=_tensor_hook)


def extract_edge_data(image: Image.Image) -> Any:
    """The WebUI's edge reader: None when fewer than two all-zero low-nibble columns are found."""
    px = np.asarray(image.convert("RGB"), dtype=np.uint8).reshape(image.size[1], image.size[0], 3)
    lit = (px > 0).all(2)
    lit_cols, lit_rows = lit.any(0), lit.any(1)
    c0, c1 = lit_cols.argmax(), lit.shape[1] - lit_cols[::-1].argmax()
    r0, r1 = lit_rows.argmax(), lit.shape[0] - lit_rows[::-1].argmax()
    px = px[r0:r1, c0:c1] & 0x0F
    zero_cols = np.where(px.sum(axis=(0, 2)) == 0)[0]
    if zero_cols.shape[0] < 2:
        return None
    left, right = px[:, : zero_cols.min()], px[:, zero_cols.max() + 1 :]
    left = left ^ lcg_low_nibbles(left.size).reshape(left.shape)
    right = right ^ lcg_low_nibbles(right.size).reshape(right.shape)
    raw = ((right << 4) | left).flatten().tobytes()
    return json.loads(zlib.decompress(raw), object_hook=_tensor_hook)


# ------------------------------------------------------------------------------------------ (b) textual_inversion.py
class WebUIRejected(Exception):
    """The WebUI logs "Error loading embedding" and goes on without this file."""


class WebUIEmbedding(NamedTuple):
    name: str
    vec: torch.Tensor | dict[str, torch.Tensor]
    shape: int  # last dim; for SDXL clip_g + clip_l (compared with the model's expected_shape)
    vectors: int
    step: Any
    sd_checkpoint: Any
    sd_checkpoint_name: Any


EXPECTED_SHAPE = {"sd1": 768, "sd2": 1024, "sdxl": 768 + 1280}  # width of encode_embedding_init_text(",", 1)


def from_data(data: Any, name: str, filename: str) -> WebUIEmbedding:
    """create_embedding_from_data: which dict layouts become an embedding."""
    try:
        if "string_to_param" in data:
            params = data["string_to_param"]
            params = getattr(params, "_parameters", params)
            if len(params) != 1:
                raise WebUIRejected("embedding file has multiple terms in it")
            vec = next(iter(params.values())).detach().to(torch.float32)
            shape, vectors = vec.shape[-1], vec.shape[0]
        elif type(data) is dict and "clip_g" in data and "clip_l" in data:
            vec = {k: v.detach().to(torch.float32) for k, v in data.items()}  # every value must be a tensor
            shape = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
            vectors = data["clip_g"].shape[0]
        elif type(data) is dict and type(next(iter(data.values()))) is torch.Tensor:
            if len(data) != 1:
                raise WebUIRejected("embedding file has multiple terms in it")
            vec = next(iter(data.values()))
            vec = (vec.unsqueeze(0) if vec.ndim == 1 else vec).detach().to(torch.float32)
            shape, vectors = vec.shape[-1], vec.shape[0]
        else:
            raise WebUIRejected(f"Couldn't identify {filename} as neither textual inversion embedding nor "
                                "diffuser concept.")
        return WebUIEmbedding(name, vec, shape, vectors, data.get("step", None), data.get("sd_checkpoint", None),
                              data.get("sd_checkpoint_name", None))
    except WebUIRejected:
        raise
    except Exception as exc:
        raise WebUIRejected(f"{filename}: {type(exc).__name__}: {exc}") from exc


def load_embedding_file(path: str | os.PathLike) -> WebUIEmbedding | None:
    """EmbeddingDatabase.load_from_dir/load_from_file for one file: None where the WebUI silently skips it."""
    path = os.fspath(path)
    filename = os.path.basename(path)
    if os.stat(path).st_size == 0:
        return None
    name, ext = os.path.splitext(filename)
    ext = ext.upper()
    try:
        if ext in (".PNG", ".WEBP", ".JXL", ".AVIF"):
            if os.path.splitext(name)[1].upper() == ".PREVIEW":
                return None
            with Image.open(path) as image:
                image.load()
                text = getattr(image, "text", None)
                if text is not None and "sd-ti-embedding" in text:
                    data = decode_chunk(text["sd-ti-embedding"])
                else:
                    data = extract_edge_data(image)
                    if not data:
                        return None  # just a picture
            name = data.get("name", name)
        elif ext in (".BIN", ".PT"):
            check_pt(path)  # inside the WebUI torch.load is safe.load: a refused file reads as None
            # only after check_pt accepted it, as the WebUI's safe.load does; test files only
            data = torch.load(path, map_location="cpu", weights_only=False)
        elif ext == ".SAFETENSORS":
            data = safetensors.torch.load_file(path, device="cpu")
        else:
            return None
    except (WebUIRejected, SafeCheckFailed):
        raise
    except Exception as exc:
        raise WebUIRejected(f"{filename}: {type(exc).__name__}: {exc}") from exc
    return from_data(data, name, filename)


def registered_for(emb: WebUIEmbedding, family: str) -> bool:
    """True where the WebUI registers it for a model of ``family``; otherwise it lands in skipped_embeddings."""
    return emb.shape == EXPECTED_SHAPE[family]
