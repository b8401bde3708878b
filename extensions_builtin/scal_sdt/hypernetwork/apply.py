"""Applying hypernetworks to a model: forward pre-hooks on every attention layer's ``to_k`` and ``to_v``.

The WebUI applies hypernetworks inside its attention forward, to the context of cross-attention and (because the
context of self-attention is the hidden state itself) to self-attention, choosing a layer by the input's width.
A hook on the key and value projections' input is that same place, in any UNet whose attention has ``to_k`` /
``to_v`` (diffusers' ``Attention``, ldm's and sgm's ``CrossAttention``), SDXL included. Hooks exist only while a
hypernetwork is active: with none, the model is the unpatched one, bit for bit.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .format import load_hypernetwork
from .module import Hypernetwork


class HypernetworkHooks:
    """The hypernetworks active on one model, each by name with its strength; the same name is never applied
    twice (setting it again replaces its strength)."""

    def __init__(self, projections: list[tuple[nn.Module, nn.Module]]):
        self.projections = projections
        self.active: dict[str, tuple[Hypernetwork, float]] = {}
        self._handles: list = []

    def set(self, hn: Hypernetwork, strength: float = 1.0) -> None:
        self.active[hn.name] = (hn, float(strength))
        if not self._handles:
            for k, v in self.projections:
                self._handles.append(k.register_forward_pre_hook(partial(self._hook, 0)))
                self._handles.append(v.register_forward_pre_hook(partial(self._hook, 1)))

    def unset(self, name: str) -> None:
        self.active.pop(name, None)
        if not self.active:
            self.clear()

    def clear(self) -> None:
        self.active.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, which: int, module: nn.Module, args: tuple):
        x = args[0]
        for hn, strength in self.active.values():
            pair = hn.layers.get(x.shape[-1])
            if pair is None:
                continue
            layer = pair[which]
            layer.multiplier = strength
            dtype = layer.linear[0].weight.dtype
            x = layer(x if x.dtype == dtype or torch.is_autocast_enabled() else x.to(dtype)).to(args[0].dtype)
        return (x, *args[1:])


def hooks_for(host) -> HypernetworkHooks:
    """The host's one :class:`HypernetworkHooks` (made on first use)."""
    hooks = getattr(host, "_hypernetwork_hooks", None)
    if hooks is None:
        hooks = HypernetworkHooks(host.kv_projections())
        host._hypernetwork_hooks = hooks
    return hooks


def apply_hypernetwork(host, path_or_hn, strength: float = 1.0) -> Hypernetwork:
    """Apply a hypernetwork (a ``.pt`` path or one already loaded) to every generation of ``host`` until
    :func:`remove_hypernetwork`; applying the same name again only changes its strength."""
    hn = path_or_hn if isinstance(path_or_hn, Hypernetwork) else load_hypernetwork(path_or_hn)
    hn.to(host.device)
    hooks_for(host).set(hn.train(False), strength)
    return hn


def remove_hypernetwork(host, name: str | None = None) -> None:
    hooks = hooks_for(host)
    hooks.clear() if name is None else hooks.unset(name)
