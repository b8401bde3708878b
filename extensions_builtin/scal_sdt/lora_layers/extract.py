"""A LoRA extracted from a fine-tune: each Linear layer's weight change (and, with a conv rank, each convolution's,
in kohya's LoCon layout), truncated by an SVD, in kohya's format — a small file that carries most of a DreamBooth run
for users who want one."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .network import BASE_MODEL_VERSION, PREFIX

LAYERS = (nn.Linear, nn.Conv2d)


def layer_weights(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """CPU copies of the Linear and Conv2d layers' weights (``modules``: original UNet path, or kohya key, ->
    module): the 'before'."""
    return {p: m.weight.detach().to("cpu", torch.float32, copy=True)
            for p, m in modules.items() if isinstance(m, LAYERS)}


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in]) with up @ down the best rank-r approximation of the 2-D ``delta``."""
    r = min(rank, *delta.shape)
    if r < min(delta.shape) // 2:
        u, s, v = torch.svd_lowrank(delta, q=min(r + 8, *delta.shape), niter=4)
        return u[:, :r] * s[:r], v[:, :r].T
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u[:, :r] * s[:r], vh[:r]


def extract_lora(before: dict[str, torch.Tensor], modules: dict[str, nn.Module], rank: int, family: str, name: str,
                 path: str | Path, extra: dict[str, torch.Tensor] | None = None,
                 conv_rank: int = 0, comment: str = "extracted from a DreamBooth fine-tune") -> tuple[Path, int]:
    """Write the low-rank approximation of (now - before) for every Linear layer that changed — and, when
    ``conv_rank`` > 0, every convolution (its change as [out, in·kh·kw], down reshaped to the kernel, up 1x1) — plus
    ``extra`` tensors (e.g. bundled embeddings); returns the path and how many layers it holds."""
    from ..files import save_safetensors

    sd = {}
    for p, before_w in before.items():
        module = modules.get(p)
        conv = isinstance(module, nn.Conv2d)
        if not isinstance(module, LAYERS) or (conv and not conv_rank):
            continue
        delta = module.weight.detach().to("cpu", torch.float32) - before_w
        if not torch.any(delta):
            continue
        up, down = low_rank(delta.flatten(1), conv_rank if conv else rank)
        if conv:
            up, down = up[:, :, None, None], down.reshape(down.shape[0], *delta.shape[1:])
        key = p if p.startswith("lora_") else PREFIX + p.replace(".", "_")
        sd[f"{key}.lora_up.weight"] = up.contiguous()
        sd[f"{key}.lora_down.weight"] = down.contiguous()
        sd[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    if not sd:
        raise ValueError("no Linear layer changed: nothing to extract")
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
            "ss_base_model_version": BASE_MODEL_VERSION[family], "ss_output_name": name,
            "scal_sdt": comment, "ss_training_comment": comment}
    if conv_rank:
        meta.update({"ss_network_args": f'{{"conv_dim": "{conv_rank}", "conv_alpha": "{conv_rank}"}}'})
    layers = len(sd) // 3
    sd.update({k: v.contiguous() for k, v in (extra or {}).items()})
    return save_safetensors(sd, path, metadata=meta), layers
