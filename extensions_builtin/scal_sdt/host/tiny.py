"""Built-in tiny models: the real SD1/SD2/SDXL architectures with small widths, made in code from a seed.

They use the real 49,408-token CLIP vocabulary, so prompts tokenize exactly as on a full model. Nothing is
downloaded. They are what the tests, the benchmarks and the offline demo run on.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .components import Components
from .families import BOS_ID, EOS_ID, SD1, SD2, SDXL, Family

TINY_NAMES = ("tiny-sd1", "tiny-sd2", "tiny-sdxl")


def clip_l_config(width: int = 32, layers: int = 2, heads: int = 2) -> CLIPTextConfig:
    """OpenAI CLIP ViT-L/14 text tower layout (quick_gelu), at the given width."""
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=width,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=1,
    )


def open_clip_config(width: int = 64, layers: int = 3, heads: int = 4, projection_dim: int | None = None) -> CLIPTextConfig:
    """OpenCLIP ViT-H / ViT-bigG text tower layout (gelu), at the given width."""
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act="gelu",
        projection_dim=projection_dim or width, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=1,
    )


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), sample_size=64,
    )


def unet_config(family: Family, context_dim: int, pooled_dim: int = 0) -> dict:
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=32,
                  cross_attention_dim=context_dim)
    if family is SD1:
        return dict(common, block_out_channels=(32, 64, 64, 64), attention_head_dim=8,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if family is SD2:
        return dict(common, block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4),
                    use_linear_projection=True,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if family is SDXL:
        time_dim = 8
        return dict(common, block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4),
                    transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                    projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim)
    raise ValueError(f"no tiny layout for {family.name}")


def build_tiny(name: str, seed: int = 0) -> Components:
    """Build ``tiny-sd1``, ``tiny-sd2`` or ``tiny-sdxl`` deterministically from ``seed``."""
    if name not in TINY_NAMES:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_NAMES)}")
    family = {"tiny-sd1": SD1, "tiny-sd2": SD2, "tiny-sdxl": SDXL}[name]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if family is SD1:
            encoders = [CLIPTextModel(clip_l_config())]
        elif family is SD2:
            encoders = [CLIPTextModel(open_clip_config())]
        else:
            encoders = [CLIPTextModel(clip_l_config()), CLIPTextModelWithProjection(open_clip_config())]
        widths = [te.config.hidden_size for te in encoders]
        pooled = encoders[-1].config.projection_dim if family.size_conditioning else 0
        unet = UNet2DConditionModel(**unet_config(family, sum(widths), pooled))
        vae = AutoencoderKL(**vae_config(), scaling_factor=family.vae_scale)
        _randomize_zero_inits(unet)
        _calibrate_vae(vae)
    finally:
        torch.random.set_rng_state(gen_state)
    for m in [unet, vae, *encoders]:
        m.eval().requires_grad_(False)
    return Components(family=family, unet=unet, vae=vae, text_encoders=encoders, name=name, source=name)


def _calibrate_vae(vae: AutoencoderKL) -> None:
    """Make the untrained VAE a usable codec: a near-deterministic posterior, and the scale factor chosen (as SD's
    was) so that the latents of typical images have unit variance. Without this the image signal would drown in
    the posterior noise and the tiny models could not learn anything from pictures."""
    from ..demo_data import COLOURS, SHAPES, draw_shape

    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = -12.0  # log-variance: std = e^-6
        names = list(COLOURS)
        images = [draw_shape(shape, names[i % len(names)], names[(i + 3) % len(names)], 64)
                  for i, shape in enumerate(SHAPES * 2)]
        pixels = torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(64, 64, 3)
                              for im in images]).permute(0, 3, 1, 2).float() / 127.5 - 1
        mean = vae.encode(pixels).latent_dist.mean
    vae.register_to_config(scaling_factor=round(float(1.0 / mean.std()), 5))


def _randomize_zero_inits(unet: torch.nn.Module) -> None:
    """Give zero-initialised output layers small random weights so that a fresh tiny UNet listens to its text."""
    for module in unet.modules():
        for p in module.parameters(recurse=False):
            if p.dim() > 1 and torch.count_nonzero(p) == 0:
                torch.nn.init.normal_(p, std=0.02)
