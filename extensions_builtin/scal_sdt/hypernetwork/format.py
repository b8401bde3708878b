"""The WebUI's hypernetwork file: a ``.pt`` dict whose int keys are context widths mapping to the
``(key_module_state, value_module_state)`` pair, beside the metadata keys the WebUI reads; the optimizer state in
``NAME.pt.optim`` (``optimizer_name``, ``hash`` = the first 10 hex digits of the ``.pt``'s sha256,
``optimizer_state_dict``), which the WebUI uses only when that hash matches.

Written with torch's legacy (non-zip) serialization and plain tensors only, the form the WebUI's ``safe.py``
accepts; read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..files import save_webui_pt
from .module import Hypernetwork, HypernetworkModule, dropout_structure_for, parse_structure

_OLD_NAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
              "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


class HypernetworkError(ValueError):
    pass


def _plain_state(module: HypernetworkModule) -> OrderedDict:
    return OrderedDict((k, v.detach().to("cpu", torch.float32).as_subclass(torch.Tensor).clone())
                       for k, v in module.state_dict().items())


def file_sha10(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


def to_webui_dict(hn: Hypernetwork) -> dict[Any, Any]:
    data: dict[Any, Any] = {width: (_plain_state(k), _plain_state(v)) for width, (k, v) in sorted(hn.layers.items())}
    data.update({
        "step": hn.step, "name": hn.name, "layer_structure": list(hn.structure), "activation_func": hn.activation,
        "is_layer_norm": hn.layer_norm, "weight_initialization": hn.weight_init, "sd_checkpoint": hn.sd_checkpoint,
        "sd_checkpoint_name": hn.sd_checkpoint_name, "activate_output": hn.activate_output,
        "use_dropout": hn.use_dropout, "dropout_structure": list(hn.dropout),
        "last_layer_dropout": hn.dropout[-2] != 0, "optional_info": hn.optional_info or None,
    })
    return data


def save_hypernetwork(hn: Hypernetwork, path, optimizer: dict | None = None) -> Path:
    """Write ``hn`` atomically; with ``optimizer`` ({"optimizer_name", "optimizer_state_dict"}) also ``.pt.optim``."""
    path = Path(path)
    if path.suffix != ".pt":
        raise HypernetworkError(f"{path}: the WebUI lists hypernetworks as .pt files")
    save_webui_pt(to_webui_dict(hn), path)
    if optimizer is not None:
        saved = {"optimizer_name": optimizer["optimizer_name"], "hash": file_sha10(path),
                 "optimizer_state_dict": optimizer["optimizer_state_dict"]}
        save_webui_pt(saved, path.with_name(path.name + ".optim"))
    return path


def _load(path: Path) -> Any:
    try:
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one message for every unreadable file
        raise HypernetworkError(f"cannot read hypernetwork {path} (corrupt, or not a weights-only file): "
                                f"{type(e).__name__}: {e}") from e


def load_hypernetwork(path) -> Hypernetwork:
    """A hypernetwork from a WebUI ``.pt`` (ours or the WebUI's, old key names included), in eval mode."""
    path = Path(path)
    data = _load(path)
    if not isinstance(data, dict) or not any(isinstance(k, int) for k in data):
        raise HypernetworkError(f"{path} is not a hypernetwork (no context-width keys)")
    structure = parse_structure(data.get("layer_structure") or [1, 2, 1])
    use_dropout = bool(data.get("use_dropout", False))
    dropout = data.get("dropout_structure")
    if dropout is not None and any(dropout):
        use_dropout = True
    if dropout is None:
        dropout = dropout_structure_for(structure, use_dropout, bool(data.get("last_layer_dropout", False)))
    hn = Hypernetwork(
        name=str(data.get("name") or path.stem), structure=structure, activation=data.get("activation_func") or "linear",
        weight_init=data.get("weight_initialization") or "Normal", layer_norm=bool(data.get("is_layer_norm", False)),
        activate_output=bool(data.get("activate_output", True)), use_dropout=use_dropout,
        last_layer_dropout=bool(data.get("last_layer_dropout", False)), dropout=[float(v) for v in dropout],
        step=int(data.get("step") or 0), sd_checkpoint=data.get("sd_checkpoint"),
        sd_checkpoint_name=data.get("sd_checkpoint_name"), optional_info=data.get("optional_info"))
    # in the file's order: the WebUI's optimizer state (.pt.optim) numbers the parameters in that order
    for width, pair in ((k, v) for k, v in data.items() if isinstance(k, int)):
        modules = []
        for state in pair:
            state = {_OLD_NAMES.get(k, k): v for k, v in state.items()}
            module = hn.module(width)
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise HypernetworkError(f"{path}: the layers for width {width} do not match its structure "
                                        f"{structure}: {e}") from e
            modules.append(module)
        hn.layers[width] = (modules[0], modules[1])
    return hn.train(False)


def load_optimizer_state(path) -> dict | None:
    """The ``.pt.optim`` beside ``path`` when its hash matches the ``.pt`` (else None, as in the WebUI)."""
    path = Path(path)
    optim = path.with_name(path.name + ".optim")
    if not optim.is_file():
        return None
    saved = _load(optim)
    if not isinstance(saved, dict) or saved.get("hash") != file_sha10(path):
        return None
    return saved
