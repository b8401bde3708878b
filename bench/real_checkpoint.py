"""Full-size SD1 / SD2 / SDXL checkpoints with random weights, in the original single-file layout (with the yaml):
what a WebUI that tells the family from the tensors' shapes (reForge, Forge) needs to load a model offline.

    python bench/real_checkpoint.py real-sd2 /work/hosts/reforge-models/realsd2.safetensors
    python bench/real_checkpoint.py real-sdxl /work/hosts/reforge-models/realsdxl.safetensors   # ~6.9 GB

SD2 is 768-v's layout (v-prediction, OpenCLIP ViT-H text, 865M-weight UNet); SDXL is base 1.0's (2.57B-weight UNet,
CLIP-L + OpenCLIP bigG). Every model gets SD's full-size VAE. SD2 and SDXL are built in fp16 (SDXL in fp32 would
take 14 GB of RAM); the files are fp16 as published checkpoints are, and written a tensor at a time.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("real-sd1", "real-sd2", "real-sdxl")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def full_vae(scale: float):
    """SD's VAE: 83.7M weights, the layout every SD1/SD2/SDXL checkpoint carries."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=scale,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def build_real_sd2():
    """SD 2.x 768-v's shapes: the UNet with linear projections and 1024-wide context, OpenCLIP ViT-H's text tower."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from scal_sdt.host.components import Components
    from scal_sdt.host.families import SD2
    from scal_sdt.host.tiny import _randomize_zero_inits, open_clip_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    _randomize_zero_inits(unet)
    te = CLIPTextModel(open_clip_config(width=1024, layers=24, heads=16, projection_dim=1024))
    return Components(family=SD2, unet=unet, vae=full_vae(SD2.vae_scale), text_encoders=[te], name="real-sd2",
                      source="real-sd2")


def build(model: str):
    """The components of ``model`` (one of :data:`MODELS`), each with the full-size VAE."""
    from ti_step import build_components, build_real_sdxl

    if model in ("real-sd2", "real-sdxl"):
        with default_dtype(torch.float16):  # built in the file's dtype: half the RAM (SDXL in fp32 would take 14 GB)
            comps = build_real_sd2() if model == "real-sd2" else build_real_sdxl()
            comps.vae = full_vae(comps.family.vae_scale)
        return comps
    if model == "real-sd1":
        comps = build_components(model)
        comps.vae = full_vae(comps.family.vae_scale)
        return comps
    raise ValueError(f"model must be one of {', '.join(MODELS)}, not {model!r}")


def write(model: str, path: Path) -> Path:
    from scal_sdt.host.checkpoint import save_checkpoint

    return save_checkpoint(build(model), path, dtype=torch.float16)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=MODELS)
    p.add_argument("out", type=Path, help="the .safetensors to write (its .yaml goes beside it)")
    args = p.parse_args(argv)
    print(write(args.model, args.out))


if __name__ == "__main__":
    main()
