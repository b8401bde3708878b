"""The parameters of a hypernetwork: the WebUI's creation options plus every shared training option."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import mention, option
from ..textual_inversion.config import check_name
from ..training.options import TrainingOptions
from .module import WEIGHT_INITS, activation_class, parse_dropout, parse_structure

ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid")


@dataclass(kw_only=True)
class HypernetworkConfig(TrainingOptions):
    """A hypernetwork: small residual MLPs on the keys and values of every attention layer, trained on a style."""

    LR_AUTO = True

    name: str = option(help="the hypernetwork's name (its file is NAME.pt)", group="hypernetwork")
    layer_structure: str = option("1, 2, 1", "layer sizes as multiples of the width; must start and end with 1",
                                  group="hypernetwork")
    activation: str = option("linear", "activation after each layer: linear, relu, leakyrelu, elu, swish, tanh, "
                                       "sigmoid, or any torch.nn activation in lower case", group="hypernetwork",
                             suggestions=ACTIVATIONS)
    activate_output: bool = option(False, "also activate the output layer", group="hypernetwork")
    layer_norm: bool = option(False, "a LayerNorm after each layer", group="hypernetwork")
    use_dropout: bool = option(False, "dropout 0.3 after the hidden layers (the WebUI's default structure)",
                               group="hypernetwork")
    last_layer_dropout: bool = option(False, "with use_dropout, also after the last hidden layer", group="hypernetwork")
    dropout_structure: str = option("", "dropout per layer instead, e.g. '0, 0.3, 0' (starts and ends with 0)",
                                    group="hypernetwork")
    weight_init: str = option("Normal", "weight initialisation", choices=WEIGHT_INITS, group="hypernetwork")
    sizes: str = option("auto", "context widths it applies to: auto = the model's (SD1: 768 cross-attention + "
                                "320, 640, 1280 self-attention; SD2: 1024 + the same; SDXL: 2048 + 640, 1280), or a "
                                "comma list", group="hypernetwork")
    overwrite: bool = option(False, "replace an existing hypernetwork of that name", group="hypernetwork")
    # the shared options whose defaults differ for hypernetworks
    lr: str = option("auto", "learning rate, or the WebUI's schedule syntax '5e-6:100, 1e-6:1500, 5e-7'; auto = a "
                             "safe rate for the structure and the model's width (5e-7 for 1, 2, 1 on SD1, the "
                             "field's limit; " + mention("find_lr") + " measures one)", group="optimisation")
    template: str = option("hypernetwork", "prompt template: a shipped name (none, style, style_filewords, subject, "
                                           "subject_filewords, hypernetwork, filewords) or a .txt file",
                           group="model and data")
    out: str = option("hypernetworks", "folder for NAME.pt (the WebUI's is models/hypernetworks)", group="output", folder=True)
    find_lr: bool = option(False, "run a short learning-rate range test instead of training, and propose a rate",
                           group="optimisation")

    def __post_init__(self):
        check_name(self.name)
        structure = parse_structure(self.layer_structure)
        parse_dropout(self.dropout_structure, structure)
        activation_class(self.activation)
        self.size_list()
        super().__post_init__()

    def size_list(self) -> list[int] | None:
        """The explicit widths, or None for auto."""
        if self.sizes.strip().lower() in ("", "auto"):
            return None
        try:
            sizes = [int(v) for v in self.sizes.replace(" ", "").split(",") if v]
        except ValueError:
            raise ValueError(f"sizes {self.sizes!r}: 'auto' or a comma list of widths, e.g. '768, 320, 640, 1280'") from None
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"sizes {self.sizes!r}: widths must be positive")
        return sizes


def safe_lr(structure: list, context_width: int) -> float:
    """The default rate: 5e-7 for the WebUI's default structure (1, 2, 1) on SD1's 768-wide context — above it
    pictures turn to noise, as users found — scaled down for wider MLPs and up for narrower models, since an Adam
    step moves each layer's output in proportion to its fan-in (the width times the layer's multiple)."""
    hidden = 1.0
    for m in structure[1:-1]:
        hidden *= m
    return 5e-7 * (768 / context_width) * (2.0 / max(hidden, 1.0))
