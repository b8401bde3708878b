"""`scal-sdt lora merge | resize | extract`: LoRAs into a checkpoint (original layout) or into one LoRA with weights,
a LoRA's rank lowered by an SVD (with the energy each layer keeps reported), and a LoRA extracted between any two
checkpoints of a family (UNet and text encoders)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import option
from .adapters import LAYERS, load_lora, read_lora, weight_delta

ACTIONS = ("merge", "resize", "extract")


@dataclass(kw_only=True)
class LoraToolConfig:
    """merge: --loras into --model's checkpoint (or, with --into-lora, into one LoRA); resize: --loras' one file to
    --rank; extract: the LoRA of --tuned minus --model."""

    action: str = option(help="merge | resize | extract", choices=ACTIONS, positional=True)
    loras: str = option("", "merge, resize: LoRA files with their weights, 'a.safetensors:0.8,b.safetensors:0.5' "
                        "(weight 1 when left out)")
    model: str = option("", "merge: the checkpoint the LoRAs are for (its family and layers); extract: the base")
    tuned: str = option("", "extract: the fine-tuned checkpoint")
    out: str = option(help="the file to write (.safetensors)")
    into_lora: bool = option(False, "merge: write one LoRA of the weighted LoRAs instead of a checkpoint")
    rank: int = option(0, "resize, extract, merge --into-lora: the rank (merge: 0 = the sum of the ranks of plain "
                       "LoRA files, exact; needed for LoHa / LoKr / DoRA files)", min=0, max=4096)
    conv_rank: int = option(0, "extract: also the convolutions at this rank (LoCon layout); 0 = Linear layers only",
                            min=0, max=4096)
    text_encoders: bool = option(True, "extract: the text encoders' change too")
    save_fp16: bool = option(True, "merge into a checkpoint: write it in fp16")
    device: str = option("cpu", "cpu, cuda, ...")
    overwrite: bool = option(False, "replace an existing output file")

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r}: choose one of {', '.join(ACTIONS)}")
        if self.action in ("merge", "resize") and not self.loras:
            raise ValueError(f"lora {self.action}: --loras is required")
        if self.action == "resize" and (self.rank < 1 or "," in self.loras):
            raise ValueError("lora resize: one file in --loras and a --rank of at least 1")
        if self.action in ("merge", "extract") and not self.model:
            raise ValueError(f"lora {self.action}: --model is required (the checkpoint the LoRA is for)")
        if self.action == "extract" and (not self.tuned or self.rank < 1):
            raise ValueError("lora extract: --tuned and a --rank of at least 1 are required")


def parse_loras(text: str) -> list[tuple[Path, float]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        path, sep, weight = part.rpartition(":")
        try:
            out.append((Path(path), float(weight)) if sep else (Path(part), 1.0))
        except ValueError:  # a colon of the path (C:\\...), no weight
            out.append((Path(part), 1.0))
    return out


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up [out, r], down [r, in], kept energy) of the 2-D ``delta``'s best rank-r approximation (full SVD)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    total = float((s ** 2).sum())
    kept = float((s[:r] ** 2).sum()) / total if total else 1.0
    return (u[:, :r] * s[:r]).float(), vh[:r].float(), kept


def lora_pair(key: str, delta: torch.Tensor, rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """kohya tensors of ``delta`` (a Linear's or Conv2d's weight change) at ``rank``, alpha = rank (scale 1)."""
    up, down, kept = low_rank(delta.flatten(1), rank)
    if delta.dim() == 4:
        up, down = up[:, :, None, None], down.reshape(down.shape[0], *delta.shape[1:])
    return {f"{key}.lora_up.weight": up.contiguous(), f"{key}.lora_down.weight": down.contiguous(),
            f"{key}.alpha": torch.tensor(float(down.shape[0]))}, kept


def _check_out(cfg: LoraToolConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def merge(cfg: LoraToolConfig, report=print) -> Path:
    """The weighted LoRAs added to the model's weights, written as a checkpoint in the original layout — or, with
    ``into_lora``, as one LoRA (plain LoRAs concatenated, exact; otherwise their summed change at ``rank``)."""
    from ..files import save_safetensors
    from ..host.standalone import load_host
    from .metadata import BASE_MODEL_VERSION

    out = _check_out(cfg)
    host = load_host(cfg.model, cfg.device, precision="fp32")
    family = host.family.name
    targets = host.lora_targets()
    loras = [(path, w, load_lora(path, targets, family).to(host.device)) for path, w in parse_loras(cfg.loras)]
    if not cfg.into_lora:
        with torch.no_grad():
            for path, w, net in loras:
                for a in net.adapters:
                    layer = a.org_module[0]
                    delta = weight_delta(a, w)  # from the weight as loaded: LoRAs add, none sees another's change
                    layer.weight.add_(delta.to(layer.weight.dtype))
                report(f"merged {path.name} at {w:g}: {len(net)} layers")
        return host.save_checkpoint(out, dtype=torch.float16 if cfg.save_fp16 else None)
    tensors, kinds = {}, {net.kind for _, _, net in loras}
    if kinds == {"lora"} and not cfg.rank:  # exact: [up_1 s_1 w_1 | up_2 s_2 w_2] @ [down_1; down_2]
        keys = sorted({k for _, _, net in loras for k in net.keys})
        for key in keys:
            ups, downs = [], []
            for _, w, net in loras:
                if key in net.keys:
                    a = net.adapters[net.keys.index(key)]
                    ups.append(a.lora_up.weight.detach().float() * a.scale * w)
                    downs.append(a.lora_down.weight.detach().float())
            down = torch.cat(downs)
            tensors.update({f"{key}.lora_up.weight": torch.cat(ups, 1).contiguous(),
                            f"{key}.lora_down.weight": down.contiguous(),
                            f"{key}.alpha": torch.tensor(float(down.shape[0]))})
        rank = max(t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight"))
    else:
        if not cfg.rank:
            raise ValueError("merging LoHa, LoKr or DoRA files into one LoRA needs --rank (their sum is re-factored)")
        deltas: dict[str, torch.Tensor] = {}
        for _, w, net in loras:
            for key, a in zip(net.keys, net.adapters):
                deltas[key] = deltas.get(key, 0) + weight_delta(a, w)
        kept = []
        for key, delta in deltas.items():
            part, k = lora_pair(key, delta, cfg.rank)
            tensors.update(part)
            kept.append(k)
        report(f"kept energy: mean {sum(kept) / len(kept):.4f}, lowest {min(kept):.4f}")
        rank = cfg.rank
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
            "ss_base_model_version": BASE_MODEL_VERSION[family], "ss_output_name": out.stem,
            "ss_training_comment": "merged by scal-sdt: " + ", ".join(f"{p.name}:{w:g}" for p, w, _ in loras)}
    return save_safetensors(tensors, out, metadata=meta)


def resize(cfg: LoraToolConfig, report=print) -> tuple[Path, list[float]]:
    """A LoRA / LoCon file at a lower rank by an SVD of each layer's change; returns the path and each layer's kept
    energy (the share of the squared singular values kept)."""
    from ..files import save_safetensors

    [(path, _)] = parse_loras(cfg.loras)
    out = _check_out(cfg)
    sd, meta = read_lora(path)
    keys = sorted({k.rsplit(".", 2)[0] for k in sd if k.endswith(".lora_down.weight")})
    if not keys or any(k.endswith((".dora_scale", ".lora_mid.weight")) or ".hada_" in k or ".lokr_" in k for k in sd):
        raise ValueError(f"{path.name}: resize works on LoRA / LoCon files (lora_up / lora_down only); extract a "
                         f"LoRA from a checkpoint the others were merged into instead")
    tensors, kept = {}, []
    for key in keys:
        up, down = sd[f"{key}.lora_up.weight"].float(), sd[f"{key}.lora_down.weight"].float()
        r = down.shape[0]
        scale = float(sd.get(f"{key}.alpha", torch.tensor(float(r)))) / r
        delta = (up.flatten(1) @ down.flatten(1)) * scale
        shape = (up.shape[0], *down.shape[1:])
        part, k = lora_pair(key, delta.reshape(shape), min(cfg.rank, r))
        tensors.update(part)
        kept.append(k)
    tensors.update({k: v for k, v in sd.items() if k.startswith("bundle_emb.")})
    meta = {**meta, "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.rank), "ss_output_name": out.stem,
            "ss_training_comment": (meta.get("ss_training_comment", "") + f" (resized to rank {cfg.rank} by scal-sdt)")
            .strip()}
    report(f"{len(keys)} layers at rank {cfg.rank}: kept energy mean {sum(kept) / len(kept):.4f}, lowest "
           f"{min(kept):.4f}")
    return save_safetensors(tensors, out, metadata=meta), kept


def _extract_targets(host, text: bool) -> dict[str, nn.Module]:
    from .targets import text_targets

    targets = {"lora_unet_" + p.replace(".", "_"): m for p, m in host.unet_modules().items() if isinstance(m, LAYERS)}
    if text:
        targets.update(text_targets(host.lora_targets()))
    return targets


def extract(cfg: LoraToolConfig, report=print) -> Path:
    """The LoRA of ``tuned`` minus ``model`` (two checkpoints of one family): each changed Linear layer (and with
    ``conv_rank`` each convolution) at ``rank``, kohya format."""
    from ..host.standalone import load_host
    from ..lora_layers.extract import extract_lora, layer_weights

    out = _check_out(cfg)
    base, tuned = load_host(cfg.model, cfg.device, precision="fp32"), load_host(cfg.tuned, cfg.device, precision="fp32")
    if base.family.name != tuned.family.name:
        raise ValueError(f"{cfg.tuned} is {tuned.family.name} and {cfg.model} is {base.family.name}: a LoRA is "
                         f"extracted between checkpoints of one family")
    before = layer_weights(_extract_targets(base, cfg.text_encoders))
    path, layers = extract_lora(before, _extract_targets(tuned, cfg.text_encoders), cfg.rank, base.family.name,
                                out.stem, out, conv_rank=cfg.conv_rank,
                                comment=f"extracted by scal-sdt: {Path(cfg.tuned).name} - {Path(cfg.model).name}")
    report(f"{layers} changed layers at rank {cfg.rank}")
    return path
