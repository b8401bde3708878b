"""The adapters of a LoRA run — LoRA, LoCon, LoHa, LoKr, DoRA — from the ``lycoris-lora`` package (what kohya's
sd-scripts and SimpleTuner use), one per target layer, named by its kohya key (``lora_unet_…``, ``lora_te1_…``).

An adapter wraps its layer's ``forward`` while attached (LyCORIS' ``apply_to`` / ``restore``): the layer's weights
are never written, so the model is bit-identical before and after. Plain LoRA and LoCon run in LyCORIS' bypass mode
(``x → up(down(x))`` beside the frozen layer: no weight-sized temporary); LoHa, LoKr and DoRA rebuild their weight
change each call, as LyCORIS does. The file is the kohya / LyCORIS layout the WebUI's built-in Lora extension reads:
``KEY.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (LoRA, LoCon), ``.hada_w1_a`` … (LoHa), ``.lokr_w1`` …
(LoKr), and for DoRA a ``.dora_scale`` beside the LoRA keys, per input column as the WebUI applies it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: the network types; locon and up put adapters on the ResNet convolutions too (conv_rank / conv_alpha)
NETWORKS = ("lora", "locon", "loha", "lokr", "dora")
INITS = ("kaiming", "gaussian")
LAYERS = (nn.Linear, nn.Conv2d)


def check_network(kind: str) -> str:
    if kind not in NETWORKS:
        raise ValueError(f"network {kind!r} is not known; choose one of {', '.join(NETWORKS)}")
    return kind


def layer_limit(module: nn.Module) -> int:
    """The largest rank that means anything for ``module``: min(out, in · kernel)."""
    w = module.weight
    return min(w.shape[0], w[0].numel())


def dora_class():
    """LyCORIS' DoRA (LoRA with a learned magnitude), applied at a strength the way the WebUI applies it:
    W + m · (decompose(W + ΔW) − W), so strength 0 is the plain model (LyCORIS' own multiplier rescales only the
    magnitude and leaves ΔW in at 0). Its file holds the scale folded into ``lora_up`` (alpha = rank): the WebUI
    multiplies by alpha / rank after the decomposition, LyCORIS before it, which agree only at scale 1."""
    from lycoris.functional.general import weight_decompose
    from lycoris.modules.locon import LoConModule

    class Dora(LoConModule):
        def apply_weight_decompose(self, weight, multiplier=1):
            full = weight_decompose(weight, self.dora_scale, 1, self.wd_on_out)
            if multiplier == 1:
                return full
            base = self._current_weight().to(full)
            return base + multiplier * (full - base)

        def custom_state_dict(self):
            sd = super().custom_state_dict()
            sd["lora_up.weight"] = sd["lora_up.weight"] * self.scale
            sd["alpha"] = torch.tensor(float(self.lora_dim))
            return sd

    return Dora


def make_adapter(kind: str, key: str, module: nn.Module, rank: int, alpha: float, *, rank_dropout: float = 0.0,
                 module_dropout: float = 0.0, init: str = "kaiming", factor: int = -1) -> nn.Module:
    """One LyCORIS module of ``kind`` for ``module`` (nn.Linear or nn.Conv2d), rank ``rank``, scale alpha / rank.
    A new adapter changes nothing (its up / second factor starts at zero); ``init`` 'gaussian' draws LoRA's down
    projection from N(0, 1/rank) (peft's 'gaussian') instead of Kaiming-uniform (kohya's, LyCORIS')."""
    from lycoris.modules.lokr import LokrModule
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule

    check_network(kind)
    if not isinstance(module, LAYERS):
        raise ValueError(f"{key}: a {type(module).__name__}, not a Linear or Conv2d layer")
    if rank < 1:
        raise ValueError(f"{key}: rank must be at least 1")
    if not alpha or alpha <= 0:
        raise ValueError(f"{key}: alpha must be > 0 (the adapter's scale is alpha / rank)")
    if kind != "lokr" and rank > layer_limit(module):
        raise ValueError(f"rank {rank} is larger than layer {key} ({tuple(module.weight.shape)}): at most "
                         f"{layer_limit(module)} there; lower --rank / --conv-rank or the block's dim")
    common = dict(multiplier=1.0, lora_dim=rank, alpha=float(alpha), rank_dropout=rank_dropout,
                  module_dropout=module_dropout)
    if kind in ("lora", "locon"):
        adapter = LoConModule(key, module, bypass_mode=True, **common)
    elif kind == "dora":  # the WebUI normalises per input column (its apply_weight_decompose): wd_on_out False
        adapter = dora_class()(key, module, weight_decompose=True, wd_on_out=False, bypass_mode=False, **common)
    elif kind == "loha":
        adapter = LohaModule(key, module, bypass_mode=False, **common)
    else:
        adapter = LokrModule(key, module, factor=factor, bypass_mode=False, **common)
    if init == "gaussian" and isinstance(adapter, LoConModule):
        with torch.no_grad():
            nn.init.normal_(adapter.lora_down.weight, std=1.0 / rank)
    elif init not in INITS:
        raise ValueError(f"network_init {init!r}: choose one of {', '.join(INITS)}")
    return adapter


class AdapterSet(nn.Module):
    """Adapters by kohya key; :meth:`attach` applies them at ``multiplier`` · their scale, :meth:`detach` puts the
    layers' own ``forward`` back."""

    def __init__(self, adapters: dict[str, nn.Module], kind: str = "lora"):
        super().__init__()
        if not adapters:
            raise ValueError("no layers to put an adapter on")
        self.keys = list(adapters)
        self.adapters = nn.ModuleList(adapters.values())
        self.kind = kind
        self.attached = False

    def __len__(self) -> int:
        return len(self.keys)

    def attach(self, multiplier: float = 1.0) -> "AdapterSet":
        self.detach()
        for a in self.adapters:
            a.multiplier = multiplier
            a.apply_to()
        self.attached = True
        return self

    def detach(self) -> None:
        if self.attached:
            for a in reversed(self.adapters):
                a.restore()
        self.attached = False

    def set_multiplier(self, multiplier: float) -> None:
        for a in self.adapters:
            a.multiplier = multiplier

    def part(self, prefix: str) -> list[nn.Parameter]:
        """The trainable parameters of the adapters whose key starts with ``prefix``."""
        return [p for k, a in zip(self.keys, self.adapters) if k.startswith(prefix) for p in a.parameters()]

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of the file, ``KEY.<LyCORIS name>``, in fp32 on the CPU."""
        out = {}
        for key, a in zip(self.keys, self.adapters):
            for name, t in a.custom_state_dict().items():
                out[f"{key}.{name}"] = t.detach().float().cpu().contiguous()
        return out

    def weight_delta(self, index: int, multiplier: float = 1.0) -> torch.Tensor:
        """What adapter ``index`` adds to its layer's weight at ``multiplier``, fp32."""
        return weight_delta(self.adapters[index], multiplier)


def weight_delta(adapter: nn.Module, multiplier: float = 1.0) -> torch.Tensor:
    """The weight change ``adapter`` makes at ``multiplier`` — as its forward applies it (and the WebUI computes it
    from the file): LyCORIS' own ``get_diff_weight`` scales LoHa's and LoKr's change by alpha / rank twice, so it is
    not used for them. DoRA: the renormalised weight's difference."""
    from lycoris.modules.locon import LoConModule

    w = adapter.org_module[0].weight.detach().float()
    was = adapter.training
    adapter.eval()  # no rank dropout
    try:
        with torch.no_grad():
            if isinstance(adapter, LoConModule):
                diff = adapter.make_weight(w.device).float().view(w.shape) * adapter.scale
            else:
                diff = adapter.get_weight(adapter.shape).float().view(w.shape) * adapter.scalar.float()
            if getattr(adapter, "wd", False):
                merged = adapter.apply_weight_decompose(w + diff.to(w.device), multiplier).float()
                return merged - w
            return diff * multiplier
    finally:
        adapter.train(was)


def network_kind(sd: dict[str, torch.Tensor], key: str) -> str:
    if f"{key}.hada_w1_a" in sd:
        return "loha"
    if f"{key}.lokr_w1" in sd or f"{key}.lokr_w1_a" in sd:
        return "lokr"
    if f"{key}.lora_up.weight" in sd:
        return "dora" if f"{key}.dora_scale" in sd else "lora"
    raise ValueError(f"{key}: no LoRA, LoHa or LoKr weights")


def _locon_from(key: str, module: nn.Module, sd: dict[str, torch.Tensor], name: str) -> nn.Module:
    from lycoris.modules.locon import LoConModule

    down, up = sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"]
    mid, dora = sd.get(f"{key}.lora_mid.weight"), sd.get(f"{key}.dora_scale")
    rank = down.shape[0]
    alpha = float(sd.get(f"{key}.alpha", torch.tensor(float(rank))))
    if rank > layer_limit(module) and mid is None:
        raise ValueError(f"{name}: {key} has rank {rank}, more than its layer {tuple(module.weight.shape)} holds")
    wd_on_out = dora is not None and dora.shape[0] == module.weight.shape[0] and dora.shape[0] != 1
    cls = dora_class() if dora is not None else LoConModule
    a = cls(key, module, 1.0, rank, alpha or rank, use_tucker=mid is not None, weight_decompose=dora is not None,
            wd_on_out=wd_on_out, bypass_mode=dora is None)
    pairs = [(a.lora_down.weight, down), (a.lora_up.weight, up)]
    if mid is not None:
        pairs.append((a.lora_mid.weight, mid))
    if dora is not None:
        pairs.append((a.dora_scale, dora))
    for mine, theirs in pairs:
        if mine.shape != theirs.shape:
            raise ValueError(f"{name}: {key} has shapes {tuple(down.shape)}/{tuple(up.shape)}, which do not fit "
                             f"this model's layer {tuple(module.weight.shape)} (a LoRA for another model?)")
        with torch.no_grad():
            mine.copy_(theirs)
    return a


def _lycoris_from(kind: str, key: str, module: nn.Module, sd: dict[str, torch.Tensor], name: str) -> nn.Module:
    from lycoris.modules.lokr import LokrModule
    from lycoris.modules.loha import LohaModule

    cls = LohaModule if kind == "loha" else LokrModule
    params = cls.extract_state_dict(sd, key)
    try:
        with torch.no_grad():
            a = cls.make_module_from_state_dict(key, module, *params)
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{name}: {key} does not fit this model's layer {tuple(module.weight.shape)} (a LoRA for "
                         f"another model?): {e}") from None
    return a


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{Path(path).name}: not a readable .safetensors LoRA ({e})") from None


def adapter_keys(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in sd if k.startswith("lora_") and "." in k})


def check_family(meta: dict[str, str], family: str, name: str) -> None:
    """A file that says it is for another family (kohya's ss_base_model_version, or ss_v2) is refused by name."""
    from .metadata import family_of

    theirs = family_of(meta)
    if theirs and theirs != family:
        raise ValueError(f"{name} is a LoRA for {theirs}; this model is {family}")


def load_lora(path: str | Path, targets: dict[str, nn.Module], family: str | None = None,
              sd: dict[str, torch.Tensor] | None = None) -> AdapterSet:
    """Any LoRA / LoCon / LoHa / LoKr / DoRA file in the kohya–LyCORIS layout, as adapters on ``targets`` (kohya
    key → layer: a host's :meth:`lora_targets`). A file for another family, a key for a layer this model lacks or a
    shape that does not fit is an error that names it."""
    name = Path(path).name
    meta = {}
    if sd is None:
        sd, meta = read_lora(path)
    if family:
        check_family(meta, family, name)
    keys = adapter_keys(sd)
    missing = [k for k in keys if not isinstance(targets.get(k), LAYERS)]
    if not keys or missing:
        raise ValueError(f"{name}: not a LoRA for this model (no layer for {', '.join(missing[:3]) or 'any key'})")
    adapters, kinds = {}, set()
    for key in keys:
        kind = network_kind(sd, key)
        kinds.add(kind)
        module = targets[key]
        adapters[key] = (_locon_from(key, module, sd, name) if kind in ("lora", "dora")
                         else _lycoris_from(kind, key, module, sd, name))
    return AdapterSet(adapters, kind=kinds.pop() if len(kinds) == 1 else "mixed")

