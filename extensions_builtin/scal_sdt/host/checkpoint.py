"""Single-file checkpoints (the original LDM/SGM layout the WebUI reads) and diffusers folders <-> :class:`Components`.

Reading: :func:`read_state_dict` (``.safetensors``; ``.ckpt``/``.pt``/``.pth``/``.bin`` with ``weights_only``),
:func:`detect_family`, the architecture from the ``.yaml`` beside the file (:func:`configs_from_yaml`, it wins, as
in the WebUI), from our own record in the safetensors metadata, or else from tensor shapes
(:func:`configs_from_tensors`), then :func:`load_checkpoint`. Writing: :func:`save_checkpoint` (+ :func:`write_yaml`).
The key conversion is in :mod:`.convert`, the architecture in :mod:`.architecture`, the yaml in :mod:`.ldm_yaml`;
their public names are re-exported here.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from ..files import save_safetensors
from .architecture import (Architecture, architecture_from_record, architecture_record, configs_from_tensors,
                           merge_yaml)
from .components import Components
from .convert import UNET_PREFIX, VAE_PREFIX, components_to_original, fit_text_state_dict, original_to_parts
from .checkpoint_file import detect_family, load_weights_only
from .families import SD1, SD2, SDXL, Family
from .ldm_yaml import configs_from_yaml, model_yaml, write_yaml

__all__ = ["Architecture", "read_state_dict", "read_metadata", "detect_family", "configs_from_tensors",
           "configs_from_yaml", "build_components", "load_checkpoint", "load_diffusers_folder", "save_checkpoint",
           "write_yaml", "model_yaml", "METADATA_KEY"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
METADATA_KEY = "scal_sdt.architecture"  # our exact architecture record inside the .safetensors header


# ----------------------------------------------------------------------------------------------------- reading
def read_state_dict(path) -> dict:
    """All tensors of a checkpoint file, on the CPU, with a top-level ``"state_dict"`` unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"checkpoint {path}: unsupported format {suffix!r} "
                         "(use .safetensors, .ckpt, .pt, .pth or .bin)")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = load_weights_only(path)
    except Exception as e:  # noqa: BLE001 - every reader error means the same thing to the user
        raise ValueError(f"cannot read checkpoint {path} (corrupt, truncated or not a weights-only file): "
                         f"{type(e).__name__}: {e}") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint {path} holds a {type(sd).__name__}, not a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def read_metadata(path) -> dict:
    """The string metadata of a ``.safetensors`` header (empty for other formats)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


# ------------------------------------------------------------------------------------------------- building
def _init_kwargs(cls, config: dict) -> dict:
    allowed = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in allowed}


def _load(module: torch.nn.Module, sd: dict, what: str, source) -> None:
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatches
        raise ValueError(f"{source}: the {what} weights do not fit the architecture: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        def show(keys):
            return ", ".join(keys[:8]) + (f" … ({len(keys)} in all)" if len(keys) > 8 else "") if keys else "none"
        raise ValueError(f"{source}: the {what} weights do not match the architecture; missing: "
                         f"{show(result.missing_keys)}; unexpected: {show(result.unexpected_keys)}")


def build_components(sd: dict, arch: Architecture, name: str = "model", source: str = "") -> Components:
    """Modules (CPU, fp32) with the checkpoint's weights, loaded strictly.

    The VAE's latent scale is ``vae.config.scaling_factor`` (from the yaml, our header or the family's default);
    ``family`` keeps its stock ``vae_scale`` and only takes the prediction type of ``arch``.
    """
    parts = original_to_parts(sd, arch.family, arch)
    unet = UNet2DConditionModel(**_init_kwargs(UNet2DConditionModel, arch.unet_config))
    _load(unet, parts["unet"], "UNet", source)
    vae = AutoencoderKL(**_init_kwargs(AutoencoderKL, arch.vae_config))
    _load(vae, parts["vae"], "VAE", source)
    encoders = []
    for spec, cfg, part in zip(arch.family.encoders, arch.text_configs, parts["text_encoders"], strict=True):
        te = (CLIPTextModelWithProjection if spec.pooled else CLIPTextModel)(cfg)
        _load(te, fit_text_state_dict(part, te), f"{spec.key} text encoder", source)
        encoders.append(te)
    for m in (unet, vae, *encoders):
        m.float().eval().requires_grad_(False)
    family = dataclasses.replace(arch.family, prediction_type=arch.prediction_type)
    return Components(family=family, unet=unet, vae=vae, text_encoders=encoders, name=name, source=source,
                      extra=dict(kept=parts["kept"], architecture=arch))


def load_checkpoint(path) -> Components:
    """Load a single-file checkpoint (original layout). Architecture: the same-stem ``.yaml`` beside it wins (as in
    the WebUI), then our record in a safetensors header, then inference from tensor shapes."""
    path = Path(path)
    sd = read_state_dict(path)
    try:
        family = detect_family(sd)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    record = read_metadata(path).get(METADATA_KEY)
    try:
        arch = architecture_from_record(json.loads(record)) if record else configs_from_tensors(sd, family)
    except (ValueError, KeyError, TypeError, StopIteration) as e:
        raise ValueError(f"{path}: cannot work out the architecture: {type(e).__name__}: {e}") from e
    if arch.family.name != family.name:
        raise ValueError(f"{path}: its header says {arch.family.name}, its weights are {family.name}")
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():
        arch = merge_yaml(arch, configs_from_yaml(yaml_path), yaml_path)
    components = build_components(sd, arch, name=path.stem, source=str(path))
    components.extra["yaml"] = str(yaml_path) if yaml_path.is_file() else None
    return components


def load_diffusers_folder(path) -> Components:
    """Load a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, [``text_encoder_2/``], ``scheduler/``)."""
    path = Path(path)
    for sub in ("unet", "vae", "text_encoder"):
        if not (path / sub).is_dir():
            raise FileNotFoundError(f"{path} is not a diffusers model folder: {sub}/ is missing")
    index_file, scheduler_file = path / "model_index.json", path / "scheduler" / "scheduler_config.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    kw = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    encoders = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)]
    if (path / "text_encoder_2").is_dir() or "XL" in index.get("_class_name", ""):
        family = SDXL
        encoders.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw))
    elif encoders[0].config.hidden_act == "gelu":  # OpenCLIP-H, cut to its penultimate layer by diffusers
        family = dataclasses.replace(SD2, encoders=tuple(dataclasses.replace(s, layer=-1) for s in SD2.encoders))
    else:
        family = SD1
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    family = dataclasses.replace(family, prediction_type=scheduler.get("prediction_type", family.prediction_type))
    for m in (unet, vae, *encoders):
        m.float().eval().requires_grad_(False)
    return Components(family=family, unet=unet, vae=vae, text_encoders=encoders, name=path.name, source=str(path))


# --------------------------------------------------------------------------------------------------- writing
def save_checkpoint(components: Components, path, dtype: torch.dtype | None = None, with_yaml: bool = True) -> Path:
    """Write ``components`` as an original-layout ``.safetensors`` (atomically), plus the ``.yaml`` beside it and,
    for text encoders of non-stock sizes, the files the WebUI needs to build them offline (``<stem>.text_encoder/``,
    ``<stem>.text_encoder_2/``; see :func:`.ldm_yaml.write_yaml`).

    The exact architecture is also recorded in the safetensors header (:data:`METADATA_KEY`), so what shapes and
    yaml cannot say (text-encoder heads of small models, an SD2 encoder's layer) survives a round trip.
    ``dtype`` (e.g. ``torch.float16``) casts the floating-point tensors.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: checkpoints are written as .safetensors")
    metadata = {METADATA_KEY: json.dumps(architecture_record(components)), "format": "pt"}
    save_safetensors(components_to_original(components), path, metadata, dtype=dtype)  # cast as each is written
    if with_yaml:
        write_yaml(components, path.with_suffix(".yaml"))
    return path
