"""What a model file is, told from its contents (never its name or folder): each reader is asked in turn whether it
accepts the file, the first that does describes it (kind, family, details, training metadata).

Nothing is unpickled beyond ``torch.load(weights_only=True)``; a ``.safetensors`` file is read from its header (plus
the few scalar ``alpha`` tensors of a LoRA). Kinds: embedding | hypernetwork | lora | lycoris | checkpoint |
aesthetic-embedding | unknown; families: sd1 | sd2 | sdxl | unknown.
"""
from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..host.checkpoint_file import detect_family, load_weights_only
from ..host.convert import UNET_PREFIX
from .webui_safe import webui_safe

KINDS = ("embedding", "hypernetwork", "lora", "lycoris", "checkpoint", "aesthetic-embedding", "unknown")
FAMILIES = ("sd1", "sd2", "sdxl", "unknown")
PICKLES = (".pt", ".ckpt", ".bin", ".pth")
IMAGES = (".png", ".webp")
#: a text encoder's width -> family (CLIP-L 768: SD1; OpenCLIP-H 1024: SD2); SDXL has CLIP-L 768 + OpenCLIP-G 1280
TEXT_WIDTH = {768: "sd1", 1024: "sd2"}
#: the UNet's cross-attention context width -> family
CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
#: an aesthetic embedding's CLIP image-embedding width -> (encoder, family)
IMAGE_WIDTH = {768: ("ViT-L-14/openai", "sd1"), 1024: ("ViT-H-14", "sd2"), 512: ("ViT-B-32", "unknown")}
LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
ARCHITECTURE_KEY = "scal_sdt.architecture"  # host.checkpoint.METADATA_KEY (that module imports diffusers)
PROJECTION = ".text_projection"  # aesthetic.make.PROJECTION: a text projection beside an aesthetic row


@dataclass
class Tensor:
    shape: tuple[int, ...]
    dtype: str


@dataclass
class FileView:
    """A file's tensors (shape and dtype by key), its string metadata and, for a pickle, the loaded object."""
    path: Path
    tensors: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    obj: Any = None
    value: Callable[[str], torch.Tensor] | None = None  # reads one (small) tensor


class NotThisKind(Exception):
    pass


def _dtype(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _flatten(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _weights_only(path: Path) -> Any:
    """torch.load(weights_only=True); the old ``ParameterDict`` embedding layout and Lightning's checkpoint records
    are the only extras allowed (as the WebUI's safe.py allows them)."""
    import zipfile

    try:
        return load_weights_only(path, mmap=zipfile.is_zipfile(path))  # a big .ckpt is not read into memory
    except pickle.UnpicklingError as e:
        if "ParameterDict" not in str(e):
            raise
    with torch.serialization.safe_globals([torch.nn.ParameterDict]):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_view(path: Path) -> FileView:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {}
            for k in f.keys():
                s = f.get_slice(k)
                tensors[k] = Tensor(tuple(s.get_shape()), str(s.get_dtype()).lower())
            metadata = dict(f.metadata() or {})

        def value(key: str) -> torch.Tensor:
            with safe_open(str(path), framework="pt") as g:
                return g.get_tensor(key)

        return FileView(path, tensors, metadata, None, value)
    if suffix in PICKLES:
        obj = _weights_only(path)
        flat = _flatten(obj)
        return FileView(path, {k: Tensor(tuple(v.shape), _dtype(v)) for k, v in flat.items()}, {}, obj,
                        lambda key: flat[key])
    return FileView(path)


def _prefixed(view: FileView, *prefixes: str) -> list[str]:
    return [k for k in view.tensors if k.startswith(prefixes)]


# ------------------------------------------------------------------------------------------------ the readers
def read_checkpoint(view: FileView) -> dict:
    from types import SimpleNamespace

    unet = _prefixed(view, UNET_PREFIX)
    if not unet:
        raise NotThisKind("no UNet weights (model.diffusion_model.*)")
    try:
        family, problem = detect_family({k: SimpleNamespace(shape=t.shape) for k, t in view.tensors.items()}).name, ""
    except ValueError as e:
        family, problem = "unknown", str(e)
    precision = Counter(view.tensors[k].dtype for k in unet).most_common()
    prediction, said_by = _prediction_type(view, family)
    parts = {"unet": True, "text_encoder": bool(_prefixed(view, "cond_stage_model.", "conditioner.embedders.")),
             "vae": bool(_prefixed(view, "first_stage_model.")), "ema": bool(_prefixed(view, "model_ema."))}
    details = {"prediction_type": prediction, "prediction_type_from": said_by, "precision": precision[0][0],
               "precisions": dict(precision), "parts": parts,
               "parameters": sum(_numel(t.shape) for t in view.tensors.values())}
    if problem:
        details["problem"] = problem
    meta = {k: v for k, v in view.metadata.items() if k != ARCHITECTURE_KEY}
    if ARCHITECTURE_KEY in view.metadata:
        meta["architecture"] = "recorded by SCAL-SDT"
    return {"kind": "checkpoint", "family": family, "details": details, "metadata": meta}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _prediction_type(view: FileView, family: str) -> tuple[str, str]:
    from ..host.families import FAMILIES

    said = view.metadata.get("modelspec.prediction_type", "")
    if said:
        return ("v_prediction" if said.startswith("v") else "epsilon"), "modelspec metadata"
    record = view.metadata.get(ARCHITECTURE_KEY)
    if record:
        try:
            kind = json.loads(record).get("prediction_type")
        except (ValueError, AttributeError):
            kind = None
        if kind:
            return kind, "SCAL-SDT architecture record"
    if "v_pred" in view.tensors:
        return "v_prediction", "the v_pred marker key"
    if family in FAMILIES:
        note = "family default; an SD2 768-v and 512-base file look alike" if family == "sd2" else "family default"
        return FAMILIES[family].prediction_type, note
    return "unknown", "unknown family"


def module_of(key: str) -> str:
    """The layer a LoRA key belongs to: kohya's ``lora_unet_…`` name, or a dotted diffusers / PEFT path."""
    return re.split(r"\.(?=lora_|hada_|lokr_|alpha$|dora_scale$|on_input$|diff$)", key, maxsplit=1)[0]


def lora_type(keys: list[str], tensors: dict[str, Tensor]) -> str:
    """lora | locon | loha | lokr | dora | ia3 | full, from the adapter keys' suffixes."""
    suffixes = {k[len(module_of(k)) + 1:] for k in keys}
    if any(s.startswith("hada_") for s in suffixes):
        return "loha"
    if any(s.startswith("lokr_") for s in suffixes):
        return "lokr"
    if "dora_scale" in suffixes:
        return "dora"
    if "on_input" in suffixes:
        return "ia3"
    if "diff" in suffixes:
        return "full"
    downs = [t for k, t in tensors.items() if k.endswith(("lora_down.weight", "lora_A.weight"))]
    return "locon" if any(len(t.shape) == 4 and t.shape[2:] != (1, 1) for t in downs) else "lora"


def _lora_family(view: FileView) -> tuple[str, str]:
    from ..lora.metadata import family_of

    said = family_of(view.metadata)
    if said:
        return said, "ss_base_model_version"
    if _prefixed(view, "lora_te1_", "lora_te2_"):
        return "sdxl", "two text encoders (lora_te1_/lora_te2_)"
    for k, t in view.tensors.items():
        if "attn2" in k and ("to_k" in k or "to_v" in k) and k.endswith(("lora_down.weight", "lora_A.weight")):
            if len(t.shape) >= 2 and t.shape[1] in CONTEXT_WIDTH:
                return CONTEXT_WIDTH[t.shape[1]], f"cross-attention input width {t.shape[1]}"
    for k, t in view.tensors.items():
        if k.startswith("lora_te_") and "q_proj" in k and k.endswith("lora_down.weight") and t.shape[1] in TEXT_WIDTH:
            return TEXT_WIDTH[t.shape[1]], f"text-encoder width {t.shape[1]}"
    return "unknown", ""


def read_lora(view: FileView) -> dict:
    keys = [k for k in view.tensors if k.startswith(LORA_PREFIXES) and "." in k]
    if not keys:
        keys = [k for k in view.tensors if ".lora_down." in k or ".lora_A." in k or ".hada_w1_a" in k]
    if not keys:
        raise NotThisKind("no LoRA keys (lora_unet_*, lora_te*_, *.lora_down.*)")
    kind = lora_type(keys, view.tensors)
    modules = sorted({module_of(k) for k in keys})
    ranks = Counter()
    for k, t in view.tensors.items():
        if k.endswith(("lora_down.weight", "lora_A.weight", "hada_w1_b", "lokr_w1_b")) and t.shape:
            ranks[t.shape[0]] += 1
        elif k.endswith(("hada_w1_a", "lokr_w2_a")) and len(t.shape) >= 2:
            ranks[t.shape[1]] += 1
    alphas = Counter()
    for k in [k for k in view.tensors if k.endswith(".alpha")][:512]:
        try:
            alphas[round(float(view.value(k)), 4)] += 1
        except (KeyError, RuntimeError, ValueError, TypeError):
            pass
    rank = ranks.most_common(1)[0][0] if ranks else None
    alpha = alphas.most_common(1)[0][0] if alphas else None
    family, said_by = _lora_family(view)
    targets = Counter()
    for m in modules:
        part = "text encoder" if m.startswith("lora_te") or m.startswith("text_encoder") else "unet"
        down = view.tensors.get(m + ".lora_down.weight") or view.tensors.get(m + ".lora_A.weight")
        kind_of = "conv" if down is not None and down.shape[2:] not in ((), (1, 1)) else (
            "attention" if "attn" in m else "other")
        targets[f"{part} {kind_of}"] += 1
    module = view.metadata.get("ss_network_module", "")
    lycoris = kind in ("loha", "lokr", "dora", "ia3", "full") or module.startswith("lycoris")
    details = {"type": kind, "rank": rank, "ranks": dict(ranks), "alpha": alpha, "modules": len(modules),
               "targets": dict(targets), "family_from": said_by,
               "precision": Counter(t.dtype for t in view.tensors.values()).most_common(1)[0][0]}
    return {"kind": "lycoris" if lycoris else "lora", "family": family, "details": details,
            "metadata": _lora_training(view.metadata)}


def _lora_training(meta: dict[str, str]) -> dict:
    keep = ("ss_output_name", "ss_sd_model_name", "ss_base_model_version", "ss_network_module", "ss_network_dim",
            "ss_network_alpha", "ss_network_args", "ss_steps", "ss_epoch", "ss_num_train_images",
            "ss_learning_rate", "ss_optimizer", "ss_resolution", "ss_training_comment", "ss_training_started_at",
            "modelspec.title", "modelspec.architecture", "modelspec.trigger_phrase")
    out = {k: v for k, v in meta.items() if k in keep}
    freq = meta.get("ss_tag_frequency")
    if freq:
        try:
            total = Counter()
            for tags in json.loads(freq).values():
                total.update(tags)
            out["top_tags"] = [t for t, _ in total.most_common(10)]
        except (ValueError, AttributeError, TypeError):
            pass
    return out


def read_hypernetwork(view: FileView) -> dict:
    data = view.obj
    if not isinstance(data, dict) or not any(isinstance(k, int) for k in data):
        raise NotThisKind("no context-width keys (the WebUI's hypernetwork layout)")
    widths = sorted(k for k in data if isinstance(k, int))
    family = next((CONTEXT_WIDTH[w] for w in sorted(widths, reverse=True) if w in CONTEXT_WIDTH), "unknown")
    layers = 0
    for w in widths:
        pair = data[w]
        if isinstance(pair, (tuple, list)) and pair and isinstance(pair[0], dict):
            layers = sum(1 for k in pair[0] if k.endswith("weight") and len(getattr(pair[0][k], "shape", ())) == 2)
            break
    details = {"widths": widths, "layer_structure": list(data.get("layer_structure") or [1, 2, 1]),
               "activation": data.get("activation_func") or "linear", "layer_norm": bool(data.get("is_layer_norm")),
               "dropout": bool(data.get("use_dropout")), "weight_init": data.get("weight_initialization") or "Normal",
               "linear_layers": layers, "family_from": "context widths"}
    meta = {k: data.get(k) for k in ("name", "step", "sd_checkpoint", "sd_checkpoint_name", "optional_info")
            if data.get(k) not in (None, "")}
    return {"kind": "hypernetwork", "family": family, "details": details, "metadata": meta}


def read_aesthetic(view: FileView) -> dict:
    obj = view.obj
    if isinstance(obj, torch.Tensor):
        if obj.ndim != 2 or obj.shape[0] != 1:
            raise NotThisKind(f"a bare tensor of shape {tuple(obj.shape)}, not an aesthetic [1, dim] row")
        encoder, family = IMAGE_WIDTH.get(obj.shape[1], ("unknown", "unknown"))
        return {"kind": "aesthetic-embedding", "family": family,
                "details": {"encoders": {"clip_l" if obj.shape[1] == 768 else "image": encoder},
                            "dims": {"image": obj.shape[1]}, "format": "the aesthetic-gradients extension's .pt"},
                "metadata": {}}
    rows = {k: t for k, t in view.tensors.items() if not k.endswith(PROJECTION)}
    aesthetic = "aesthetic" in view.metadata.get("trainer", "") or any(k.endswith(PROJECTION) for k in view.tensors)
    if not aesthetic or not rows or any(len(t.shape) != 2 or t.shape[0] != 1 for t in rows.values()):
        raise NotThisKind("not a [1, dim] CLIP image row per encoder with SCAL-SDT's aesthetic metadata")
    try:
        encoders = json.loads(view.metadata.get("encoders", "{}"))
    except ValueError:
        encoders = {}
    keys = set(rows)
    family = {frozenset({"clip_l"}): "sd1", frozenset({"clip_h"}): "sd2",
              frozenset({"clip_l", "clip_g"}): "sdxl"}.get(frozenset(keys), "unknown")
    if encoders.get("clip_l") == "toy":
        family = "unknown"
    meta = {k: v for k, v in view.metadata.items() if k not in ("encoders",)}
    return {"kind": "aesthetic-embedding", "family": family,
            "details": {"encoders": encoders or {k: "unknown" for k in rows},
                        "dims": {k: t.shape[1] for k, t in rows.items()},
                        "text_projection": sorted(k[:-len(PROJECTION)] for k in view.tensors if k.endswith(PROJECTION))},
            "metadata": meta}


def embedding_family(widths: dict[str, int]) -> str:
    if set(widths) == {"clip_l", "clip_g"}:
        return "sdxl" if (widths["clip_l"], widths["clip_g"]) == (768, 1280) else "unknown"
    if len(widths) == 1:
        return TEXT_WIDTH.get(next(iter(widths.values())), "unknown")
    return "unknown"


def read_embedding(view: FileView) -> dict:
    from ..textual_inversion.format import EmbeddingError, load_embedding

    if isinstance(view.obj, torch.Tensor):
        raise NotThisKind("a bare tensor (the WebUI reads embeddings from a dict)")
    try:
        emb = load_embedding(view.path)
    except EmbeddingError as e:
        raise NotThisKind(str(e).replace(str(view.path) + ": ", "")) from None
    widths = emb.widths
    details = {"vectors": emb.num_vectors, "widths": widths, "name": emb.name}
    meta = {k: v for k, v in (("step", emb.step), ("sd_checkpoint", emb.sd_checkpoint),
                              ("sd_checkpoint_name", emb.sd_checkpoint_name)) if v is not None}
    meta.update(emb.meta)
    return {"kind": "embedding", "family": embedding_family(widths), "details": details, "metadata": meta}


#: the readers in the order they are asked (a checkpoint's keys are unmistakable, an embedding's least so)
READERS: list[tuple[str, Callable[[FileView], dict]]] = [
    ("checkpoint", read_checkpoint), ("lora", read_lora), ("hypernetwork", read_hypernetwork),
    ("aesthetic-embedding", read_aesthetic), ("embedding", read_embedding)]


def inspect_file(path: str | Path) -> dict:
    """The description of one file: ``file``, ``size_bytes``, ``kind``, ``family``, ``details``, ``metadata``,
    ``webui_safe`` (for pickles: whether the WebUI's safe.py loads it) and, for an unknown file, ``why``."""
    path = Path(path)
    out: dict[str, Any] = {"file": str(path), "size_bytes": path.stat().st_size if path.is_file() else None}
    if not path.is_file():
        return {**out, "kind": "unknown", "family": "unknown", "details": {}, "metadata": {},
                "why": "no such file" if not path.exists() else "not a file"}
    suffix = path.suffix.lower()
    if suffix in PICKLES:
        verdict = webui_safe(path)
        out["webui_safe"] = {"loads": verdict.loads, "later_loads": verdict.later_loads, "reason": verdict.reason}
    elif suffix == ".safetensors":
        out["webui_safe"] = {"loads": True, "later_loads": True,
                             "reason": "safetensors: no pickle, safe.py is not involved"}
    try:
        view = read_view(path)
    except Exception as e:  # noqa: BLE001 - any reader failure makes the file unknown, with the reason
        reason = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0][:200] if str(e) else ""
        return {**out, "kind": "unknown", "family": "unknown", "details": {}, "metadata": {},
                "why": f"cannot read it as weights only ({type(e).__name__}: {reason})"}
    tried = []
    for name, reader in READERS:
        if suffix in IMAGES and name != "embedding":
            continue
        try:
            return {**out, **reader(view)}
        except NotThisKind as e:
            tried.append(f"{name}: {e}")
    return {**out, "kind": "unknown", "family": "unknown", "details": {}, "metadata": view.metadata,
            "why": "; ".join(tried)}


def summary(info: dict) -> str:
    """One or two lines a person reads: ``NAME: kind, family, the details that matter``."""
    d = info.get("details", {})
    kind = info["kind"]
    bits = []
    if kind == "embedding":
        bits.append(f"{d['vectors']} vector{'s' if d['vectors'] != 1 else ''}, width "
                    + ", ".join(f"{k if k != '*' else ''}{'=' if k != '*' else ''}{w}" for k, w in d["widths"].items()))
    elif kind == "hypernetwork":
        bits.append(f"widths {', '.join(map(str, d['widths']))}; layers {d['layer_structure']}, {d['activation']}"
                    + (", layer norm" if d["layer_norm"] else "") + (", dropout" if d["dropout"] else ""))
    elif kind in ("lora", "lycoris"):
        bits.append(f"{d['type']}, rank {d['rank']}, alpha {d['alpha']}, {d['modules']} modules "
                    f"({', '.join(f'{k} {n}' for k, n in d['targets'].items())})")
    elif kind == "checkpoint":
        bits.append(f"{d['prediction_type']} ({d['prediction_type_from']}), {d['precision']}, "
                    f"{d['parameters'] / 1e6:.1f} M parameters" + (f"; {d['problem']}" if d.get("problem") else ""))
    elif kind == "aesthetic-embedding":
        bits.append("encoders " + ", ".join(f"{k} {v}" for k, v in d["encoders"].items()))
    else:
        bits.append(info.get("why", ""))
    meta = info.get("metadata") or {}
    step = meta.get("step") or meta.get("ss_steps")
    if step not in (None, ""):
        bits.append(f"step {step}")
    trained_on = meta.get("sd_checkpoint_name") or meta.get("ss_sd_model_name")
    if trained_on:
        bits.append(f"trained on {trained_on}")
    if meta.get("top_tags"):
        bits.append("tags " + ", ".join(meta["top_tags"][:5]))
    safe = info.get("webui_safe")
    line = f"{info['file']}: {kind}, {info['family']}; " + "; ".join(b for b in bits if b)
    if safe is not None:
        yes = {True: "yes", False: "no", None: "?"}
        line += f"\n    WebUI safe.py loads it: {yes[safe['loads']]}"
        if safe["later_loads"] != safe["loads"]:
            line += f" (v1.8.0), {yes[safe['later_loads']]} (later versions)"
        line += f": {safe['reason']}"
    return line
