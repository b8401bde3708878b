"""Aesthetic gradients: extra seconds and extra peak memory per generation, ours vs the original algorithm, on the
same text encoder in the same run.

original   the aesthetic-gradients extension: a full CLIP (text and vision towers, fp32, kept on the CPU) deep-copied
           to the device for every generation, Adam on all its text weights, the prompt encoded with the copy
           and blended; nothing cached, so every generation (seed, batch) pays again.
ours       AestheticGradient: the host's own text encoder (in the host's dtype: fp16 on CUDA) tuned in place with
           CompactAdam (bf16 moments for half weights) and restored bit for bit; only the text projection kept; the
           blended conditioning cached, so the second generation with the same settings reuses it.

Both: the same prompt, embedding, steps and lr; the host's text encoder is on the device before timing (it is for
any generation). Extra time = the side's conditioning time minus the host's plain encode; extra peak = CUDA's
max_memory_allocated above what the loaded model holds (on the CPU: how far the RSS rises). Each side runs in a
fresh subprocess.

    python bench/aesthetic.py                               # small CLIP, CPU
    python bench/aesthetic.py --device cuda --real          # CLIP-L text (SD1's) + ViT-L/14 vision, random weights
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import subprocess
import sys
import time

import torch

PROMPT = "a portrait of a woman in a garden, oil painting"


def clip_config(real: bool):
    from transformers import CLIPConfig

    if real:  # openai/clip-vit-large-patch14's shapes
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="quick_gelu")
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)
    text = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=64,
                  patch_size=16)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    def __init__(self, device):
        self.device = device

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_mb()
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            peak = rss_mb() - self.base
        return time.perf_counter() - self.t0, peak


def run_side(side: str, args) -> dict:
    from transformers import CLIPModel, CLIPTextModel

    from scal_sdt.aesthetic.gradient import AestheticGradient, AestheticSettings, hf_tower
    from scal_sdt.host.base import Conditioning
    from scal_sdt.host.tokenizer import clip_token_ids

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    full = CLIPModel(clip_config(args.real)).eval()  # the CLIP the original keeps on the CPU
    host_te = CLIPTextModel(full.config.text_config).eval()
    inner = getattr(host_te, "text_model", host_te)  # transformers 5 flattened CLIPTextModel
    inner.load_state_dict(full.text_model.state_dict())
    host_te.to(device, dtype).requires_grad_(False)  # the host's own text encoder, as loaded for generation
    projection = full.text_projection.weight.detach().T.clone()
    embedding = torch.nn.functional.normalize(torch.randn(1, projection.shape[1]), dim=-1)
    s = AestheticSettings(weight=0.2, steps=args.steps, lr=1e-4)
    ids = clip_token_ids([PROMPT] * args.batch).to(device)

    def plain_encode():
        with torch.no_grad():
            return host_te(input_ids=ids).last_hidden_state

    class Host:  # the part of a host AestheticGradient uses
        def encode_prompts(self, texts, embeddings=None, size=None):
            return Conditioning(host_te(input_ids=clip_token_ids(texts).to(device)).last_hidden_state, None, None)

        def on_device(self, *parts):
            return contextlib.nullcontext()

    if side == "ours":
        del full
        gradient = AestheticGradient(Host(), [hf_tower("clip_l", host_te, clip_token_ids, projection)])

        def generation():
            return gradient.conditioning([PROMPT] * args.batch, {"clip_l": embedding}, s).context
    else:
        def generation():  # the extension's AestheticCLIP.__call__, per generation
            model = copy.deepcopy(full).to(device)
            opt = torch.optim.Adam(model.text_model.parameters(), lr=s.lr)
            target = embedding.to(device)
            for _ in range(s.steps):
                opt.zero_grad()
                feats = model.text_projection(model.text_model(input_ids=ids).pooler_output)
                feats = feats / feats.norm(dim=-1, keepdim=True)
                loss = -(feats @ target.T).mean()
                loss.backward()
                opt.step()
            with torch.no_grad():
                tuned = model.text_model(input_ids=ids).last_hidden_state.to(dtype)
            del model, opt
            return plain_encode() * (1 - s.weight) + tuned * s.weight

    meter = Meter(device)
    plain_encode()
    meter.start()
    for _ in range(3):
        plain_encode()
    plain_s = meter.stop()[0] / 3
    out = {}
    for i in (1, 2):
        meter.start()
        generation()
        seconds, peak = meter.stop()
        out[f"gen{i}_extra_s"], out[f"gen{i}_peak_mb"] = seconds - plain_s, peak
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real", action="store_true", help="CLIP-L / ViT-L/14 shapes (random weights)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", default="")
    ap.add_argument("--side", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args)))
        return
    results = {}
    for side in ("original", "ours"):
        cmd = [sys.executable, __file__, "--side", side, "--device", args.device, "--steps", str(args.steps),
               "--batch", str(args.batch)] + (["--real"] if args.real else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
        results[side] = json.loads(r.stdout.strip().splitlines()[-1])
    o, u = results["original"], results["ours"]
    print(f"device {args.device}, {'CLIP-L/ViT-L-14' if args.real else 'small CLIP'}, {args.steps} steps, "
          f"batch {args.batch}")
    print(f"{'':28}{'original':>12}{'ours':>12}{'ours/orig':>11}")
    for key, label in (("gen1_extra_s", "1st generation, extra s"), ("gen2_extra_s", "2nd generation, extra s"),
                       ("gen1_peak_mb", "1st generation, extra MB"), ("gen2_peak_mb", "2nd generation, extra MB")):
        ratio = u[key] / o[key] if o[key] > 1e-9 else float("nan")
        print(f"{label:28}{o[key]:12.3f}{u[key]:12.3f}{ratio:11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results}, f, indent=1)


if __name__ == "__main__":
    main()
