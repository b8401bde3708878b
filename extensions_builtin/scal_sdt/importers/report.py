"""What an import did with each option of the foreign file: nothing is dropped without being named."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAPPED, APPROXIMATED, UNSUPPORTED = "mapped", "approximated", "not supported"


def is_unset(value: Any) -> bool:
    """An option left at nothing (empty, zero, false, none): not supporting it loses nothing."""
    return value in (None, "", 0, 0.0, False, [], {}) or (isinstance(value, str) and value.strip().lower() in
                                                           ("none", "null", "0", "false", "off", "no"))


@dataclass
class Entry:
    key: str  # the foreign option, with its table for nested ones ("optimizer.weight_decay")
    value: Any
    status: str
    ours: dict = field(default_factory=dict)  # the options it set
    how: str = ""  # for approximated and not supported: what was done instead, or why not


@dataclass
class ImportReport:
    source: str  # the file (and its format) read
    command: str = ""
    entries: list[Entry] = field(default_factory=list)

    def add(self, key: str, value: Any, status: str, ours: dict | None = None, how: str = "") -> None:
        self.entries.append(Entry(key, value, status, dict(ours or {}), how))

    def of(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.status == status]

    def unsupported(self, *, unset: bool) -> list[Entry]:
        return [e for e in self.of(UNSUPPORTED) if is_unset(e.value) == unset]

    def lines(self) -> list[str]:
        """The report as text, one option a line, grouped by what happened to it."""
        out = [f"imported {self.source} as scal-sdt {self.command}"]

        def ours(e: Entry) -> str:
            return ", ".join(f"{k} = {v!r}" for k, v in e.ours.items())

        mapped = self.of(MAPPED)
        if mapped:
            out.append(f"mapped ({len(mapped)}):")
            out += [f"  {e.key} = {e.value!r} -> {ours(e)}" + (f" ({e.how})" if e.how else "") for e in mapped]
        approx = self.of(APPROXIMATED)
        if approx:
            out.append(f"approximated ({len(approx)}):")
            out += [f"  {e.key} = {e.value!r} -> {ours(e) or 'nothing'}: {e.how}" for e in approx]
        lost = self.unsupported(unset=False)
        if lost:
            out.append(f"not supported, with a value that is NOT used ({len(lost)}):")
            out += [f"  {e.key} = {e.value!r}" + (f": {e.how}" if e.how else "") for e in lost]
        unset = self.unsupported(unset=True)
        if unset:
            out.append(f"not supported, unset in the file (nothing lost) ({len(unset)}): "
                       + ", ".join(e.key for e in unset))
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "command": self.command,
                "entries": [dict(key=e.key, value=e.value, status=e.status, ours=e.ours, how=e.how)
                            for e in self.entries]}
