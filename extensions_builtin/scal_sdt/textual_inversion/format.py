"""Textual Inversion embedding files: every layout the WebUI reads, and the ones it writes.

Reading: ``.pt``/``.bin`` (A1111 ``string_to_param``, also as an old ``nn.ParameterDict``; SDXL ``clip_l``/``clip_g``;
a single-tensor dict such as diffusers' ``learned_embeds.bin`` or ``emb_params``), ``.safetensors`` (one tensor under
any key, or ``clip_l``/``clip_g``; our metadata in ``__metadata__``) and images (``png_embedding``).

Writing follows what the WebUI accepts (see ``tests/webui_rules.py``):

* ``.pt`` is written with torch's legacy serialization, because the WebUI's ``modules/safe.py`` rejects the extra
  records of the modern zip format. A one-encoder embedding uses the WebUI's own dict; an SDXL one is the bare
  ``{"clip_l": T, "clip_g": T}`` dict, because the WebUI turns *every* value of such a dict into a tensor, so it can
  carry no name, step or checkpoint (use safetensors or PNG for those).
* In PNG an SDXL embedding likewise holds only its tensors in the WebUI's chunk; the name, step, checkpoint and
  ``meta`` go into an extra ``scal-sdt-embedding`` text chunk that the WebUI ignores.
* The WebUI names ``.pt``/``.safetensors`` embeddings after the file stem (it ignores the stored name), so save them
  as ``<name>.<ext>``.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

from ..files import atomic_path
from . import png_embedding

ONE = "*"  # key of the single tensor of a one-encoder (SD1/SD2) embedding
SDXL_KEYS = ("clip_l", "clip_g")
FIELDS = ("name", "step", "sd_checkpoint", "sd_checkpoint_name")
PT_META_KEY = "scal_sdt_meta"  # extra key in our one-encoder .pt files; the WebUI ignores it
_SUFFIXES = {"safetensors": (".safetensors",), "pt": (".pt", ".bin"), "png": (".png",)}
_KNOWN = {".safetensors", ".pt", ".bin", *png_embedding.IMAGE_SUFFIXES}


class EmbeddingError(ValueError):
    """A file or embedding that cannot be read, written or used; the message names it."""


def _vectors(raw: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping) or not raw:
        raise EmbeddingError(f"{where}: has no vectors")
    out: dict[str, torch.Tensor] = {}
    for key, t in raw.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise EmbeddingError(f"{where}: entry {key!r} is a {type(t).__name__}, not a tensor")
        if not (t.is_floating_point() or t.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)):
            raise EmbeddingError(f"{where}: tensor {key!r} has unsupported dtype {t.dtype}")
        t = t.detach()
        if t.ndim == 1:
            t = t.unsqueeze(0)
        if t.ndim != 2 or t.numel() == 0:
            raise EmbeddingError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected [n_vectors, width]")
        out[key] = t.to("cpu", torch.float32).as_subclass(torch.Tensor)
    if ONE in out and len(out) > 1:
        raise EmbeddingError(f"{where}: key {ONE!r} (one-encoder) mixed with {sorted(out)}")
    rows = {k: t.shape[0] for k, t in out.items()}
    if len(set(rows.values())) > 1:
        raise EmbeddingError(f"{where}: the encoders have different numbers of vectors {rows}")
    return out


@dataclass
class Embedding:
    name: str
    vectors: dict[str, torch.Tensor]  # encoder key -> float32 CPU [n_vectors, width]; '*' for a one-tensor file
    step: int | None = None
    sd_checkpoint: str | None = None  # short hash of the checkpoint it was trained on
    sd_checkpoint_name: str | None = None
    meta: dict[str, str] = field(default_factory=dict)  # extra info (e.g. the training config as JSON)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise EmbeddingError(f"embedding name must be a non-empty string, got {self.name!r}")
        self.vectors = _vectors(self.vectors, f"embedding {self.name!r}")

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {k: t.shape[1] for k, t in self.vectors.items()}

    def for_encoders(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The vectors for a model whose text encoders are ``keys`` ('*' maps onto a single encoder)."""
        keys = list(keys)
        if not keys:
            raise EmbeddingError(f"embedding {self.name!r}: the model has no text encoders")
        if ONE in self.vectors:
            if len(keys) != 1:
                raise EmbeddingError(f"embedding {self.name!r} has one tensor but this model has "
                                     f"{len(keys)} text encoders ({', '.join(keys)})")
            return {keys[0]: self.vectors[ONE]}
        missing = [k for k in keys if k not in self.vectors]
        if missing:
            raise EmbeddingError(f"embedding {self.name!r} has no vectors for {', '.join(missing)} "
                                 f"(it has {', '.join(sorted(self.vectors))})")
        return {k: self.vectors[k] for k in keys}


def check_fits(emb: Embedding, widths: dict[str, int]) -> None:
    """Raise EmbeddingError unless ``emb`` has vectors of the right width for every encoder in ``widths``."""
    got = emb.for_encoders(list(widths))
    for key, want in widths.items():
        have = got[key].shape[1]
        if have != want:
            raise EmbeddingError(f"embedding {emb.name!r} has width {have} but this model's {key} is {want}")


# ----------------------------------------------------------------------------------------------- reading
def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _opt_int(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def _info(src: Mapping[str, Any], meta_key: str = PT_META_KEY) -> dict[str, Any]:
    meta = src.get(meta_key)
    return {"name": _opt_str(src.get("name")), "step": _opt_int(src.get("step")),
            "sd_checkpoint": _opt_str(src.get("sd_checkpoint")),
            "sd_checkpoint_name": _opt_str(src.get("sd_checkpoint_name")),
            "meta": {str(k): str(v) for k, v in meta.items()} if isinstance(meta, Mapping) else {}}


def _from_mapping(data: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors and info from a dict in any of the layouts the WebUI reads."""
    if not isinstance(data, Mapping):
        raise EmbeddingError(f"{where}: holds a {type(data).__name__}, not an embedding dict")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # an old nn.ParameterDict
        if not isinstance(params, Mapping) or len(params) != 1:
            n = len(params) if isinstance(params, Mapping) else "no"
            raise EmbeddingError(f"{where}: has {n} terms in string_to_param; an embedding must have exactly one")
        return {ONE: next(iter(params.values()))}, _info(data)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if all(k in tensors for k in SDXL_KEYS):
        return tensors, _info(data)
    if len(tensors) == 1:
        return {ONE: next(iter(tensors.values()))}, _info(data)
    if not tensors:
        raise EmbeddingError(f"{where}: contains no tensor (keys: {', '.join(map(str, data)) or 'none'})")
    raise EmbeddingError(f"{where}: has more than one term ({', '.join(map(str, tensors))}); "
                         "an embedding must have exactly one")


def _torch_load(path: Path) -> Any:
    # torch.serialization.load is torch.load; inside the WebUI the name torch.load is rebound to its safe.py wrapper,
    # which refuses modern zip files that weights_only loading reads safely.
    try:
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "ParameterDict" not in str(exc) or not hasattr(torch.serialization, "safe_globals"):
            raise
    with torch.serialization.safe_globals([torch.nn.ParameterDict]):  # the old string_to_param layout
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        md = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if all(k in tensors for k in SDXL_KEYS):
        vectors = tensors
    elif len(tensors) == 1:
        vectors = {ONE: next(iter(tensors.values()))}
    elif not tensors:
        raise EmbeddingError(f"{path}: contains no tensor")
    else:
        raise EmbeddingError(f"{path}: has more than one term ({', '.join(tensors)}); an embedding must have one")
    info = _info(md)
    info["meta"] = {k: v for k, v in md.items() if k not in FIELDS}
    return vectors, info


def _read_image(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if Path(path.stem).suffix.lower() == ".preview":
        raise EmbeddingError(f"{path}: is a preview image (*.preview.*), not an embedding")
    data, side = png_embedding.read_image(path)
    if data is None:
        raise EmbeddingError(f"{path}: image holds no embedding (no '{png_embedding.TEXT_KEY}' chunk, "
                             "no data in its edges)")
    vectors, info = _from_mapping(data, str(path))
    extra = _info(side, "meta")
    for k in FIELDS:
        if info[k] is None:
            info[k] = extra[k]
    info["meta"] = {**extra["meta"], **info["meta"]}
    return vectors, info


def load_embedding(path: str | Path, name: str | None = None) -> Embedding:
    """Read an embedding file; its name is ``name``, else the one stored in the file, else the file stem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _KNOWN:
        raise EmbeddingError(f"{path}: unsupported embedding file extension {path.suffix!r}")
    try:
        if not path.is_file():
            raise EmbeddingError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise EmbeddingError(f"{path}: file is empty")
        if suffix in (".pt", ".bin"):
            vectors, info = _from_mapping(_torch_load(path), str(path))
        elif suffix == ".safetensors":
            vectors, info = _read_safetensors(path)
        else:
            vectors, info = _read_image(path)
        return Embedding(name=name or info["name"] or path.stem, vectors=_vectors(vectors, str(path)),
                         step=info["step"], sd_checkpoint=info["sd_checkpoint"],
                         sd_checkpoint_name=info["sd_checkpoint_name"], meta=info["meta"])
    except EmbeddingError:
        raise
    except Exception as exc:  # corrupt files raise whatever their parser raises
        text = str(exc)
        if "WeightsUnpickler error:" in text:  # torch's weights-only message buries the reason under advice
            text = text.split("WeightsUnpickler error:", 1)[1]
        reason = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:200]
        raise EmbeddingError(f"{path}: cannot read embedding, corrupt or not an embedding file "
                             f"({type(exc).__name__}: {reason})") from exc


# ----------------------------------------------------------------------------------------------- writing
def _target(path: str | Path, fmt: str) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES[fmt]:
        target = path
    elif suffix in _KNOWN:
        raise EmbeddingError(f"{path}: extension {path.suffix!r} does not match format {fmt!r}")
    else:
        target = path.with_name(path.name + _SUFFIXES[fmt][0])
    if fmt == "png" and Path(target.stem).suffix.lower() == ".preview":
        raise EmbeddingError(f"{target}: the WebUI skips *.preview.png files; choose another name")
    return target


def _plain(t: torch.Tensor) -> torch.Tensor:
    # a fresh, compact, plain float32 tensor: no Parameter class, no requires_grad, no shared larger storage
    return t.detach().to("cpu", torch.float32).as_subclass(torch.Tensor).clone(memory_format=torch.contiguous_format)


def _webui_dict(emb: Embedding, tensor: torch.Tensor) -> dict[str, Any]:
    return {"string_to_token": {ONE: 265}, "string_to_param": {ONE: tensor}, "name": emb.name, "step": emb.step,
            "sd_checkpoint": emb.sd_checkpoint, "sd_checkpoint_name": emb.sd_checkpoint_name}


def save_embedding(emb: Embedding, path: str | Path, fmt: str = "safetensors", preview: Image.Image | None = None,
                   *, edge_data: bool = True) -> Path:
    """Write ``emb`` atomically as ``safetensors``, ``pt`` or ``png``; returns the path written.

    A path without a matching extension gets one appended. ``preview`` is the picture of a PNG (a plain card
    if None); ``edge_data`` also hides the data in the PNG's edges, as the WebUI does.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in _SUFFIXES:
        raise EmbeddingError(f"embedding {emb.name!r}: unknown format {fmt!r} (use safetensors, pt or png)")
    target = _target(path, fmt)
    tensors = {k: _plain(t) for k, t in emb.vectors.items()}
    single = len(tensors) == 1
    if not single and not all(k in tensors for k in SDXL_KEYS):
        raise EmbeddingError(f"embedding {emb.name!r}: the WebUI reads several tensors only as SDXL "
                             f"{'/'.join(SDXL_KEYS)}, not {', '.join(tensors)}")
    meta = {str(k): str(v) for k, v in emb.meta.items()}
    fields = {"name": emb.name, "step": emb.step, "sd_checkpoint": emb.sd_checkpoint,
              "sd_checkpoint_name": emb.sd_checkpoint_name}
    with atomic_path(target) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            clash = sorted(set(meta) & set(FIELDS))
            if clash:
                raise EmbeddingError(f"embedding {emb.name!r}: meta keys {clash} clash with the file's own fields")
            md = {k: str(v) for k, v in fields.items() if v is not None}
            save_file({"emb_params": next(iter(tensors.values()))} if single else tensors, str(tmp),
                      metadata={**md, **meta})
        elif fmt == "pt":
            obj: dict[str, Any] = _webui_dict(emb, next(iter(tensors.values()))) if single else dict(tensors)
            if single and meta:
                obj[PT_META_KEY] = meta
            torch.save(obj, str(tmp), _use_new_zipfile_serialization=False)
        else:
            data = _webui_dict(emb, next(iter(tensors.values()))) if single else dict(tensors)
            image = preview if preview is not None else png_embedding.plain_card(
                f"<{emb.name}>", [f"{emb.num_vectors}v  step {emb.step if emb.step is not None else '?'}",
                                  emb.sd_checkpoint_name or emb.sd_checkpoint or ""])
            png_embedding.write_png(tmp, data, image, {**fields, "meta": meta}, edge_data=edge_data)
    return target
