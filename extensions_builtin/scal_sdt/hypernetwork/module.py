"""A hypernetwork as the WebUI defines it, in its exact module layout.

For each context width it applies to (the text width for cross-attention, the channel widths for
self-attention), a pair of small residual MLPs transforms the input of an attention layer's key and value
projections: ``k = to_k(x + mlp_k(x) * strength)``. The MLP is a ``Sequential`` named ``linear`` of ``Linear``
layers sized by the layer structure (``1, 2, 1`` = width -> 2 width -> width), each optionally followed by an
activation (not after the last unless ``activate_output``), a ``LayerNorm`` and a ``Dropout``; the indices of that
Sequential are the keys of the saved state dicts, so the order here is the WebUI's.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

#: the WebUI's named activations; any other ``torch.nn`` activation class works by its lower-case name
NAMED_ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
                     "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def activation_class(name: str | None) -> type[nn.Module] | None:
    """The activation module class for ``name`` (None for linear / no activation)."""
    if name in (None, "", "linear"):
        return None
    if name in NAMED_ACTIVATIONS:
        return NAMED_ACTIVATIONS[name]
    extra = {n.lower(): c for n, c in inspect.getmembers(nn.modules.activation, inspect.isclass)
             if c.__module__ == "torch.nn.modules.activation"}
    if name in extra:
        return extra[name]
    raise ValueError(f"unknown activation {name!r}; use {', '.join(NAMED_ACTIVATIONS)} or a torch.nn activation "
                     f"name in lower case (e.g. gelu, silu, mish)")


def parse_structure(text: str | list) -> list[float]:
    """'1, 2, 1' -> [1, 2, 1]; it must start and end with 1 and have at least two entries."""
    try:
        values = [float(v) for v in (text.replace(" ", "").split(",") if isinstance(text, str) else text) if v != ""]
    except (TypeError, ValueError):
        values = []
    if len(values) < 2 or values[0] != 1 or values[-1] != 1 or any(v <= 0 for v in values):
        raise ValueError(f"layer structure {text!r}: it must start and end with 1, e.g. '1, 2, 1'")
    return [int(v) if float(v).is_integer() else v for v in values]


def dropout_structure_for(structure: list, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """The WebUI's default dropout per layer: 0.3 after the hidden layers (and the last hidden one only with
    ``last_layer_dropout``), never on the input or output."""
    if not use_dropout:
        return [0.0] * len(structure)
    middle = [0.3] * (len(structure) - 3) + [0.3 if last_layer_dropout else 0.0]
    return [0.0] + middle + [0.0]


def parse_dropout(text: str | list | None, structure: list) -> list[float] | None:
    if text in (None, ""):
        return None
    try:
        values = [float(v) for v in (text.replace(" ", "").split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        values = []
    if len(values) != len(structure) or values[0] != 0 or values[-1] != 0 or any(not 0 <= v < 1 for v in values):
        raise ValueError(f"dropout structure {text!r}: one value in [0, 1) per layer ({len(structure)}), "
                         f"starting and ending with 0, e.g. '0, 0.3, 0'")
    return values


class HypernetworkModule(nn.Module):
    """One residual MLP: ``x + linear(x) * multiplier`` (the multiplier is ignored while training, as in the
    WebUI)."""

    def __init__(self, dim: int, structure: list, activation: str | None = None, weight_init: str = "Normal",
                 layer_norm: bool = False, activate_output: bool = False, dropout: list[float] | None = None):
        super().__init__()
        self.multiplier = 1.0
        act = activation_class(activation)
        layers: list[nn.Module] = []
        for i in range(len(structure) - 1):
            layers.append(nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1])))
            last = i == len(structure) - 2
            if act is not None and (not last or activate_output):
                layers.append(act())
            if layer_norm:
                layers.append(nn.LayerNorm(int(dim * structure[i + 1])))
            if dropout is not None and dropout[i + 1] > 0:
                layers.append(nn.Dropout(p=dropout[i + 1]))
        self.linear = nn.Sequential(*layers)
        self._initialise(weight_init, activation)

    def _initialise(self, weight_init: str, activation: str | None) -> None:
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"unknown weight initialisation {weight_init!r}; use {', '.join(WEIGHT_INITS)}")
        gain = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue
            w, b = layer.weight.data, layer.bias.data
            if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(w, mean=0.0, std=0.01)
                nn.init.zeros_(b)
            elif weight_init == "XavierUniform":
                nn.init.xavier_uniform_(w), nn.init.zeros_(b)
            elif weight_init == "XavierNormal":
                nn.init.xavier_normal_(w), nn.init.zeros_(b)
            elif weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(w, nonlinearity=gain), nn.init.zeros_(b)
            else:
                nn.init.kaiming_normal_(w, nonlinearity=gain), nn.init.zeros_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * (1.0 if self.training else self.multiplier)


@dataclass
class Hypernetwork:
    """Named pairs of modules per context width, plus the WebUI's metadata."""

    name: str
    structure: list = field(default_factory=lambda: [1, 2, 1])
    activation: str = "linear"
    weight_init: str = "Normal"
    layer_norm: bool = False
    activate_output: bool = False
    use_dropout: bool = False
    last_layer_dropout: bool = False
    dropout: list[float] | None = None
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = field(default_factory=dict)
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None

    def __post_init__(self):
        self.structure = parse_structure(self.structure)
        if self.dropout is None:
            self.dropout = dropout_structure_for(self.structure, self.use_dropout, self.last_layer_dropout)

    def module(self, width: int) -> HypernetworkModule:
        return HypernetworkModule(width, self.structure, self.activation, self.weight_init, self.layer_norm,
                                  self.activate_output, self.dropout)

    def add_width(self, width: int) -> None:
        if width not in self.layers:
            self.layers[width] = (self.module(width), self.module(width))

    @property
    def widths(self) -> list[int]:
        return sorted(self.layers)

    def parameters(self) -> list[nn.Parameter]:
        return [p for pair in self.layers.values() for m in pair for p in m.parameters()]

    def train(self, mode: bool = True) -> "Hypernetwork":
        for pair in self.layers.values():
            for m in pair:
                m.train(mode).requires_grad_(mode)
        return self

    def to(self, device=None, dtype=None) -> "Hypernetwork":
        for pair in self.layers.values():
            for m in pair:
                m.to(device=device, dtype=dtype)
        return self


def create_hypernetwork(name: str, widths: list[int], structure="1, 2, 1", activation: str = "linear",
                        weight_init: str = "Normal", layer_norm: bool = False, activate_output: bool = False,
                        use_dropout: bool = False, last_layer_dropout: bool = False, dropout: str | list | None = None,
                        seed: int | None = None) -> Hypernetwork:
    """A new hypernetwork for ``widths`` with the WebUI's options; ``seed`` makes the initial weights repeatable."""
    parsed = parse_structure(structure)
    hn = Hypernetwork(name, parsed, activation or "linear", weight_init, layer_norm, activate_output, use_dropout,
                      last_layer_dropout, parse_dropout(dropout, parsed))
    activation_class(hn.activation)  # a clear error before any module is built
    state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        for width in sorted(set(widths)):
            hn.add_width(int(width))
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    return hn.train(False)
