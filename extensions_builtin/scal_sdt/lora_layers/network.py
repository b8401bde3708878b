"""LoRA layers added to named Linear (and Conv2d) layers of a model through forward hooks (so the host's modules are
never replaced, and detaching leaves them exactly as they were), saved and loaded in kohya's format:
``lora_unet_<module path with _>.lora_down.weight`` [rank, in], ``.lora_up.weight`` [out, rank], ``.alpha``; for a
convolution kohya's LoCon layout, down [rank, in, kh, kw] with the layer's stride and padding, up [out, rank, 1, 1].

Module paths are the original (LDM/SGM) UNet's — ``input_blocks.4.1.transformer_blocks.0.attn2.to_k`` — which the
WebUI (its "lora_unet" → "diffusion_model" fallback), ComfyUI and kohya's SDXL files use for every family."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

PREFIX = "lora_unet_"
#: which attention projections each choice of UNet parts covers
UNET_PARTS: dict[str, tuple[str, ...]] = {
    "attn2-kv": ("attn2.to_k", "attn2.to_v"),
    "attn2": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "attn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
             "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


class LoraLayer(nn.Module):
    """down (Kaiming-uniform, as kohya) then up (zeros: a new LoRA changes nothing), scaled by alpha / rank; for a
    Conv2d ``module`` the down projection is a convolution with its kernel, stride and padding, up a 1x1 one."""

    def __init__(self, module: nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(module, nn.Conv2d):
            self.down = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride, module.padding,
                                  module.dilation, bias=False)
            self.up = nn.Conv2d(rank, module.out_channels, 1, bias=False)
        else:
            self.down = nn.Linear(module.in_features, rank, bias=False)
            self.up = nn.Linear(rank, module.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.multiplier = 1.0

    @property
    def rank(self) -> int:
        return self.down.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.multiplier * float(self.alpha) / self.rank
        return self.up(self.down(x.to(self.down.weight.dtype))) * scale


class LoraNetwork(nn.Module):
    """LoRA layers for ``targets`` (module path → nn.Linear or nn.Conv2d), applied while attached."""

    def __init__(self, targets: dict[str, nn.Module], rank: int = 4, alpha: float | None = None):
        super().__init__()
        if not targets:
            raise ValueError("no layers to put a LoRA on")
        self.targets = targets
        self.paths = list(targets)
        self.layers = nn.ModuleList(LoraLayer(m, rank, alpha if alpha else rank) for m in targets.values())
        self._hooks: list = []

    def attach(self, multiplier: float = 1.0) -> "LoraNetwork":
        self.detach()
        for layer, module in zip(self.layers, self.targets.values()):
            layer.multiplier = multiplier
            self._hooks.append(module.register_forward_hook(
                lambda mod, args, out, layer=layer: out + layer(args[0]).to(out.dtype)))
        return self

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def kohya_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for path, layer in zip(self.paths, self.layers):
            key = path if path.startswith("lora_") else PREFIX + path.replace(".", "_")
            out[f"{key}.lora_down.weight"] = layer.down.weight.detach().float().cpu().contiguous()
            out[f"{key}.lora_up.weight"] = layer.up.weight.detach().float().cpu().contiguous()
            out[f"{key}.alpha"] = layer.alpha.detach().float().cpu().reshape(())
        return out

    def save(self, path: str | Path, family: str, name: str, extra: dict[str, str] | None = None) -> Path:
        from ..files import save_safetensors

        layer = self.layers[0]
        meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(layer.rank),
                "ss_network_alpha": f"{float(layer.alpha):g}", "ss_base_model_version": BASE_MODEL_VERSION[family],
                "ss_output_name": name, **(extra or {})}
        return save_safetensors(self.kohya_state_dict(), path, metadata=meta)


def unet_targets(modules: dict[str, nn.Module], parts: str) -> dict[str, nn.Linear]:
    """The Linear layers of the UNet (``modules``: original module path → module) that ``parts`` names."""
    if parts not in UNET_PARTS:
        raise ValueError(f"unet parts {parts!r}: choose one of {', '.join(UNET_PARTS)}")
    ends = UNET_PARTS[parts]
    return {path: m for path, m in modules.items() if isinstance(m, nn.Linear) and path.endswith(ends)}


def load_kohya(path: str | Path, modules: dict[str, nn.Module]) -> LoraNetwork:
    """A kohya LoRA file. ``modules``: the UNet's modules by original-layout path (as for :func:`unet_targets`), or
    a host's :meth:`lora_targets` (kohya key -> module: diffusers' UNet names and the text encoders' too). Linear
    layers and LoCon convolutions; a key for a layer this model lacks, or of another shape, is an error naming it."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    by_key = {(k if k.startswith("lora_") else PREFIX + k.replace(".", "_")): m for k, m in modules.items()
              if isinstance(m, (nn.Linear, nn.Conv2d))}
    names = sorted({k.rsplit(".", 2)[0] for k in sd if k.endswith(".lora_down.weight")})
    missing = [n for n in names if n not in by_key]
    if not names or missing:
        raise ValueError(f"{Path(path).name}: not a LoRA for this model (no layer for "
                         f"{', '.join(missing[:3]) or 'any key'})")
    net = LoraNetwork({n: by_key[n] for n in names}, rank=1)
    with torch.no_grad():
        for i, n in enumerate(names):
            down, up = sd[f"{n}.lora_down.weight"], sd[f"{n}.lora_up.weight"]
            rank = down.shape[0]
            layer = LoraLayer(by_key[n], rank, float(sd.get(f"{n}.alpha", torch.tensor(rank))))
            if layer.down.weight.shape != down.shape or layer.up.weight.shape != up.shape:
                raise ValueError(f"{Path(path).name}: {n} has shapes {tuple(down.shape)}/{tuple(up.shape)}, this "
                                 f"model's layer wants {tuple(layer.down.weight.shape)}/{tuple(layer.up.weight.shape)}")
            layer.down.weight.copy_(down)
            layer.up.weight.copy_(up)
            net.layers[i] = layer
    return net
