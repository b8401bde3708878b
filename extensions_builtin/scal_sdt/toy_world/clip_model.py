"""The toy CLIP: an open_clip model (ViT image tower + OpenAI-style text tower with the real CLIP tokenizer),
trained contrastively on the toy world, and its text tower as the SD1 text encoder of the toy diffusion model.

Saved as open_clip saves models on the hub (``open_clip_config.json`` + ``open_clip_model.safetensors``), so
``open_clip.create_model("local-dir:<folder>")`` loads it like any other CLIP.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from ..files import atomic_write_text, save_safetensors
from ..host.convert_text import fit_text_state_dict, open_clip_to_diffusers
from ..host.families import EOS_ID
from ..host.tiny import clip_l_config
from ..host.tokenizer import CONTEXT, clip_token_ids as token_ids
from .optim import warmup_cosine
from .pool import ScenePool, mirrored, random_caption

MODEL_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,  # OpenAI CLIP's activation, as in SD1's text encoder
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3,
                 "pad_id": EOS_ID, "eos_id": EOS_ID, "pool_type": "argmax"},
}
# the toy world's images are drawn in [-1, 1]; open_clip's preprocessing maps [0, 1] with mean/std 0.5
PREPROCESS_CFG = {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "shortest"}
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def build_clip(seed: int):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    cfg = MODEL_CFG
    return CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]),
                quick_gelu=cfg["quick_gelu"])


def train_clip(pool: ScenePool, steps: int, seed: int, batch_size: int = 128, lr: float = 2e-3, log=None):
    """Contrastive training (symmetric InfoNCE, learned temperature) on ``pool`` with a random caption per image
    and left-right flips. Deterministic for a seed and thread count."""
    model = build_clip(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(f"toy-clip/{seed}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, steps)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
        flips = torch.rand(batch_size, generator=gen) < 0.5
        scenes = [mirrored(pool.scenes[i]) if f else pool.scenes[i] for i, f in zip(idx.tolist(), flips.tolist())]
        images = pool.batch(idx, flips)
        texts = token_ids([random_caption(s, rng) for s in scenes])
        img, txt, scale = model(images, texts)
        logits = scale * img @ txt.t()
        labels = torch.arange(batch_size)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"clip step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def retrieval_accuracy(model, pool: ScenePool, n: int = 256) -> float:
    """Image -> text top-1 accuracy over ``n`` images of ``pool`` with their plain sentence captions."""
    from .world import caption_sentence

    idx = torch.arange(min(n, len(pool)))
    img = model.encode_image(pool.batch(idx), normalize=True)
    txt = model.encode_text(token_ids([caption_sentence(pool.scenes[i]) for i in idx.tolist()]), normalize=True)
    sims = img @ txt.t()
    # a caption may describe several images of the pool the same way: any caption equal to the true one counts
    captions = [caption_sentence(pool.scenes[i]) for i in idx.tolist()]
    best = sims.argmax(1).tolist()
    return sum(captions[b] == captions[i] for i, b in enumerate(best)) / len(best)


def save_clip(model, folder, dtype: torch.dtype = torch.float16) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    save_safetensors(sd, folder / WEIGHTS_FILE)
    atomic_write_text(folder / CONFIG_FILE, json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG},
                                                       indent=2) + "\n")
    return folder


def load_clip(folder):
    """The toy CLIP (or any open_clip model saved the same way) from a local folder, in fp32, eval mode."""
    import open_clip

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE} (an open_clip model folder)")
    model = open_clip.create_model(f"local-dir:{folder}", precision="fp32")
    return model.eval().requires_grad_(False)


def text_encoder_from_clip(model):
    """The CLIP's text tower as a transformers ``CLIPTextModel`` in SD1's CLIP-L layout (no projection)."""
    from transformers import CLIPTextModel

    text = MODEL_CFG["text_cfg"]
    sd = {k: v.float() for k, v in model.state_dict().items()
          if not k.startswith("visual.") and k not in ("logit_scale", "attn_mask")}
    hf = {k: v for k, v in open_clip_to_diffusers(sd).items() if not k.startswith("text_projection")}
    encoder = CLIPTextModel(clip_l_config(width=text["width"], layers=text["layers"], heads=text["heads"]))
    encoder.load_state_dict(fit_text_state_dict(hf, encoder), strict=False)
    missing = set(encoder.state_dict()) - set(fit_text_state_dict(hf, encoder))
    missing = {k for k in missing if not k.endswith("position_ids")}
    if missing:
        raise ValueError(f"the CLIP text tower lacks {sorted(missing)[:5]}")
    return encoder.eval().requires_grad_(False)
