"""A single-file checkpoint read without building a model (no diffusers import: ``scal-sdt inspect`` and the library
ask this of many files): its family from the keys alone, and its pickle loaded weights-only."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .convert import UNET_PREFIX, VAE_PREFIX
from .families import SD1, SD2, SDXL, Family


def load_weights_only(path: Path, mmap: bool = False):
    """``torch.load(weights_only=True)``; original SD1 ``.ckpt`` files also pickle PyTorch Lightning's ModelCheckpoint
    state and numpy scalars beside the weights, which are allowed as inert stand-ins on a second try. ``mmap``: the
    tensors stay in the file until read (zip-format files only), so looking at a big checkpoint costs no memory."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        import codecs

        import numpy as np
        scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
        stub = type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})
        allowed = [stub, codecs.encode, np.dtype, (scalar, "numpy.core.multiarray.scalar"),
                   (scalar, "numpy._core.multiarray.scalar"), *{type(np.dtype(t)) for t in "f4 f8 i4 i8 u1 ?".split()}]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def detect_family(sd: dict) -> Family:
    """SD1, SD2 or SDXL from the keys; anything else (refiner, inpainting, unCLIP, LoRA…) is refused by name."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in sd)

    if not has(UNET_PREFIX):
        raise ValueError("not a Stable Diffusion checkpoint: no UNet weights (model.diffusion_model.*); "
                         "a LoRA, VAE or embedding file cannot be loaded as a model")
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in.shape[1] != 4:
        kinds = {9: "an inpainting", 8: "an instruct-pix2pix", 5: "a depth-conditioned"}
        kind = kinds.get(conv_in.shape[1], "an unknown")
        raise ValueError(f"{kind} model ({conv_in.shape[1]} UNet input channels) is not supported; "
                         "use a plain text-to-image SD1/SD2/SDXL checkpoint")
    if has("conditioner.embedders.0.model."):
        raise ValueError("an SDXL refiner checkpoint is not supported (no CLIP-L text encoder); use an SDXL base model")
    if has("conditioner.embedders.0.transformer.") and has("conditioner.embedders.1.model."):
        family = SDXL
    elif has("cond_stage_model.model."):
        family = SD2
    elif has("cond_stage_model.transformer."):
        family = SD1
    else:
        raise ValueError("unknown checkpoint type: no SD1 (cond_stage_model.transformer.), SD2 "
                         "(cond_stage_model.model.) or SDXL (conditioner.embedders.1.model.) text encoder")
    if family is not SDXL and has(UNET_PREFIX + "label_emb."):
        raise ValueError("a class-conditioned (unCLIP) checkpoint is not supported")
    if not has(VAE_PREFIX):
        raise ValueError("the checkpoint has no VAE (first_stage_model.*)")
    return family
