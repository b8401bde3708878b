"""open_clip models the user already has, loaded without downloading: a local open_clip folder
(``open_clip_config.json`` + weights), ``toy`` (the toy world's CLIP), ``hf-hub:REPO`` or ``ARCH/PRETRAINED``
(e.g. ``ViT-L-14/openai``) when its weights are in the Hugging Face cache. Used by CLIP interrogation in the
tagger and by aesthetic embeddings."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

TOY_CLIP = "toy"


def toy_clip_folder() -> Path:
    return Path(__file__).resolve().parent / "toy_world" / "pretrained" / "toy-clip"


@dataclass
class OpenClip:
    model: Any  # open_clip.CLIP, eval, no grad
    preprocess: Callable  # PIL image -> [3, H, W] tensor, as the model was trained
    tokenizer: Callable  # list[str] -> [N, context] ids
    name: str


def _offline():
    """Hub lookups answer from the local cache only while loading (restored afterwards)."""
    class Offline:
        def __enter__(self):
            self.old = os.environ.get("HF_HUB_OFFLINE")
            os.environ["HF_HUB_OFFLINE"] = "1"

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = self.old
    return Offline()


def _local_folder(folder: Path, device: str):
    """An open_clip model folder (open_clip_config.json + weights) built from its config with the installed
    open_clip's own classes — also the older open_clip the WebUI pins, which has no ``local-dir:`` loader."""
    import dataclasses
    import json

    import open_clip
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    model_cfg = dict(cfg["model_cfg"])

    def known(cls, values: dict) -> dict:  # fields a newer open_clip wrote that this one does not know
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in values.items() if k in names}

    model_cfg["text_cfg"] = known(CLIPTextCfg, model_cfg.get("text_cfg", {}))
    model_cfg["vision_cfg"] = known(CLIPVisionCfg, model_cfg.get("vision_cfg", {}))
    model_cfg = {k: v for k, v in model_cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
    model = CLIP(**model_cfg)
    weights = folder / "open_clip_model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    elif (folder / "open_clip_pytorch_model.bin").is_file():
        sd = torch.load(str(folder / "open_clip_pytorch_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} has no open_clip_model.safetensors or open_clip_pytorch_model.bin")
    missing, _ = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing:
        raise ValueError(f"{folder}: the weights lack {missing[:4]} for its config")
    pre = cfg.get("preprocess_cfg", {})
    size = pre.get("size", model.visual.image_size)
    preprocess = open_clip.image_transform(size, is_train=False, mean=pre.get("mean"), std=pre.get("std"))
    context = model_cfg["text_cfg"].get("context_length", 77)
    return model.to(device), preprocess, lambda texts: open_clip.tokenize(texts, context_length=context)


def load_open_clip(spec: str, device: str = "cpu") -> OpenClip:
    import open_clip

    folder = toy_clip_folder() if spec == TOY_CLIP else Path(spec).expanduser()
    try:
        with _offline():
            if folder.is_dir():
                if not (folder / "open_clip_config.json").is_file():
                    raise FileNotFoundError(f"{folder} holds no open_clip_config.json (an open_clip model folder)")
                model, preprocess, tokenizer = _local_folder(folder, device)
            elif spec.startswith("hf-hub:"):
                model, _, preprocess = open_clip.create_model_and_transforms(spec, precision="fp32", device=device)
                tokenizer = open_clip.get_tokenizer(spec)
            elif spec.count("/") == 1:
                arch, pretrained = spec.split("/")
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained,
                                                                             precision="fp32", device=device)
                tokenizer = open_clip.get_tokenizer(arch)
            else:
                raise FileNotFoundError(f"{spec}: not a folder; give an open_clip folder, 'toy', hf-hub:REPO or "
                                        "ARCH/PRETRAINED such as ViT-L-14/openai")
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # open_clip raises RuntimeError / hub errors when the weights are not cached
        raise FileNotFoundError(f"CLIP {spec!r} could not be loaded from local files ({type(e).__name__}: {e}); "
                                f"nothing is downloaded here: fetch it once (e.g. `huggingface-cli download "
                                f"timm/vit_large_patch14_clip_224.openai`) or give a local open_clip folder") from None
    return OpenClip(model.eval().requires_grad_(False), preprocess, tokenizer, spec)
