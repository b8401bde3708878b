"""Renaming state-dict keys by a table of prefix pairs, in either direction (longest matching prefix wins)."""
from __future__ import annotations

from typing import Iterable


def rename(sd: dict, pairs: Iterable[tuple[str, str]], reverse: bool = False) -> dict:
    """Rename keys of ``sd`` by (a, b) prefix pairs: a -> b, or b -> a with ``reverse``.

    A pair either names a whole key or a prefix ending with ``.``; the longest match wins, so a specific pair
    (``input_blocks.1.0.in_layers.0.``) overrides a general one. Keys that match nothing are kept unchanged
    (a strict load then reports them).
    """
    table = {b: a for a, b in pairs} if reverse else dict(pairs)
    return {_rename_key(key, table): value for key, value in sd.items()}


def _rename_key(key: str, table: dict[str, str]) -> str:
    if key in table:
        return table[key]
    cut = key.rfind(".")
    while cut > 0:
        prefix = key[:cut + 1]
        if prefix in table:
            return table[prefix] + key[cut + 1:]
        cut = key.rfind(".", 0, cut)
    return key
