"""The parameters of `scal-sdt inspect`, `scal-sdt library` and `scal-sdt choose`."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, option


@dataclass(kw_only=True)
class InspectConfig:
    files: list[str] = option(help="model files to describe (.pt, .ckpt, .bin, .safetensors, .png)", positional=True)
    json: bool = option(False, "print one JSON object per file instead of text")

    def __post_init__(self):
        check_bounds(self)
        if not self.files:
            raise ValueError("files: give at least one file")
