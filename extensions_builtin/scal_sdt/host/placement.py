"""Memory modes: which model parts sit on the compute device, and when.

- ``normal``: everything stays on the device.
- ``medvram``: only the parts a step asks for (``on_device``) are on the device; the rest wait on the CPU.
- ``lowvram``: as medvram, and the UNet's big blocks are streamed to the device one at a time during a forward.

Moving goes through one ``mover(module, device)`` so tests can watch placement without a GPU.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

MEMORY_MODES = ("normal", "medvram", "lowvram")

Mover = Callable[[nn.Module, torch.device], None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def move(module: nn.Module, device: torch.device) -> None:
    module.to(device)


class Placement:
    """Owns where each named part (a list of modules) lives. ``streamed`` are the UNet blocks lowvram streams."""

    def __init__(self, parts: dict[str, list[nn.Module]], device: torch.device, mode: str = "normal",
                 offload: torch.device = torch.device("cpu"), mover: Mover = move,
                 streamed: list[nn.Module] | None = None):
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, not {mode!r}")
        self.parts, self.device, self.mode, self.offload, self.mover = parts, device, mode, offload, mover
        self.streamed = list(streamed or []) if mode == "lowvram" else []
        self.resident: set[str] = set()
        for modules in parts.values():
            for m in modules:
                self.mover(m, offload)
        if mode == "normal":
            self._place(set(parts))
        for block in self.streamed:
            block.register_forward_pre_hook(lambda module, args: self.mover(module, self.device))
            block.register_forward_hook(lambda module, args, output: self.mover(module, self.offload))

    def _place(self, wanted: set[str]) -> None:
        for name, modules in self.parts.items():
            if name in wanted and name not in self.resident:
                for m in modules:
                    for piece in self._pieces(m):
                        self.mover(piece, self.device)
            elif name not in wanted and name in self.resident:
                for m in modules:
                    self.mover(m, self.offload)
        self.resident = set(wanted)

    def _pieces(self, module: nn.Module) -> list[nn.Module]:
        """What to move for a part: the whole module, or under lowvram everything but its streamed blocks."""
        if not self.streamed:
            return [module]
        return list(_without(module, {id(b) for b in self.streamed}))

    @contextlib.contextmanager
    def on_device(self, *names: str) -> Iterator[None]:
        """Put ``names`` on the device (others off it, unless the mode is normal). Parts stay until asked to move."""
        unknown = set(names) - set(self.parts)
        if unknown:
            raise ValueError(f"unknown model part(s) {sorted(unknown)}; parts are {sorted(self.parts)}")
        if self.mode != "normal":
            self._place(set(names))
        else:
            self._place(self.resident | set(names))  # bring back parked parts, evict nothing
        yield

    def park(self, name: str) -> None:
        """Move one part off the device until a step asks for it again (e.g. the VAE once latents are cached)."""
        if name in self.resident:
            for m in self.parts[name]:
                self.mover(m, self.offload)
            self.resident.discard(name)


def _without(module: nn.Module, skip: set[int]) -> Iterator[nn.Module]:
    """The largest sub-modules of ``module`` that contain none of the ``skip`` modules."""
    if id(module) in skip:
        return
    if not any(id(m) in skip for m in module.modules()):
        yield module
        return
    if any(True for _ in module.parameters(recurse=False)):
        raise ValueError(f"{type(module).__name__} holds parameters beside streamed blocks; cannot stream it")
    for child in module.children():
        yield from _without(child, skip)
