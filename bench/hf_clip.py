"""An open_clip ViT CLIP (the toy CLIP) written as a transformers ``CLIPModel`` folder (text and vision towers,
tokenizer and image processor), for peers that load their CLIP with ``CLIPModel.from_pretrained`` — the original
aesthetic-gradients extension loads the one named by the WebUI text encoder's ``name_or_path``. Bench-only."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

_VIS_BLOCK = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_NAMES = {"ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
                "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
                "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
                "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
                "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}


def vision_state_dict(sd: dict) -> dict:
    """open_clip ``visual.*`` keys -> transformers ``vision_model.*`` / ``visual_projection.weight``."""
    out = {"vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
           "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],  # sic: transformers' name
           "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
           "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
           "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
           "visual_projection.weight": sd["visual.proj"].t().contiguous()}
    for key, value in sd.items():
        m = _VIS_BLOCK.fullmatch(key)
        if not m:
            continue
        prefix = f"vision_model.encoder.layers.{m[1]}."
        if m[2].startswith("attn.in_proj_"):
            kind = m[2].rsplit("_", 1)[1]
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
        else:
            out[prefix + _BLOCK_NAMES[m[2]]] = value
    return out


def write_hf_clip(open_clip_folder: Path, out: Path) -> Path:
    """The open_clip model in ``open_clip_folder`` (``open_clip_config.json`` + weights) as a transformers CLIPModel
    folder ``out`` (config.json, model.safetensors, tokenizer files, preprocessor_config.json)."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from scal_sdt.host.convert_text import open_clip_to_diffusers
    from scal_sdt.host.text_encoder_folder import _tokenizer_files
    from scal_sdt.toy_world.clip_model import load_clip

    cfg = json.loads((open_clip_folder / "open_clip_config.json").read_text())
    model_cfg, pre = cfg["model_cfg"], cfg.get("preprocess_cfg", {})
    vis, txt = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    config = CLIPConfig(
        text_config=dict(vocab_size=txt["vocab_size"], hidden_size=txt["width"], intermediate_size=4 * txt["width"],
                         num_hidden_layers=txt["layers"], num_attention_heads=txt["heads"],
                         max_position_embeddings=txt["context_length"], hidden_act=act, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=vis["width"], intermediate_size=4 * vis["width"],
                           num_hidden_layers=vis["layers"], num_attention_heads=vis["width"] // vis["head_width"],
                           image_size=vis["image_size"], patch_size=vis["patch_size"], hidden_act=act),
        projection_dim=model_cfg["embed_dim"])
    sd = load_clip(open_clip_folder).state_dict()
    text = {k: v for k, v in sd.items() if not k.startswith("visual.") and k != "logit_scale"}
    weights = {**open_clip_to_diffusers(text), **vision_state_dict(sd), "logit_scale": sd["logit_scale"]}
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"CLIP conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(out / "config.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    for name, content in _tokenizer_files().items():
        (out / name).write_text(content, encoding="utf-8")
    size = pre.get("size", vis["image_size"])
    size = size[0] if isinstance(size, (list, tuple)) else size
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": pre.get("mean", [0.5] * 3),
        "image_std": pre.get("std", [0.5] * 3), "resample": 3, "do_convert_rgb": True,
        "processor_class": "CLIPProcessor"}, indent=2))
    return out


@torch.no_grad()
def check(open_clip_folder: Path, hf_folder: Path) -> tuple[float, float]:
    """(max |difference| of image features, of text features) between the open_clip model and the written one."""
    from transformers import CLIPModel

    from scal_sdt.toy_world.clip_model import load_clip

    oc = load_clip(open_clip_folder)
    hf = CLIPModel.from_pretrained(hf_folder).eval()
    size = hf.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    ids = torch.tensor([[49406, 320, 1000, 49407] + [49407] * 73])
    def features(out):  # a tensor (transformers 4), or an output whose pooler_output is projected (5)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    image = (oc.encode_image(pixels) - features(hf.get_image_features(pixel_values=pixels))).abs().max().item()
    text = (oc.encode_text(ids) - features(hf.get_text_features(input_ids=ids))).abs().max().item()
    return image, text
