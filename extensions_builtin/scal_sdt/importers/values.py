"""Reading the loosely typed values of other trainers' files ("1e-4", "", "k=v k=v")."""
from __future__ import annotations

from typing import Any


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    x = as_float(value)
    return int(x) if x is not None and x.is_integer() else None


def key_values(value: Any) -> dict[str, str]:
    """``network_args`` / ``optimizer_args``: a list of "k=v" or one string of them separated by spaces."""
    items = value if isinstance(value, list) else str(value or "").split()
    out = {}
    for item in items:
        k, _, v = str(item).partition("=")
        if k.strip():
            out[k.strip()] = v.strip().strip("'\"")
    return out
