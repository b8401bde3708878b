"""Prompt templates and caption tags, as the WebUI's textual-inversion trainer and kohya's sd-scripts use them.

A template is a text file of prompt lines; one is picked per sample and ``[name]`` (the trained token) and
``[filewords]`` (the image's caption) are filled in. The shipped ones live in ``scal_sdt/templates/``.
"""
from __future__ import annotations

import random
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def list_templates() -> list[str]:
    """Names of the shipped templates (file stems), sorted."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def load_template(name_or_path) -> list[str]:
    """The non-empty, stripped lines of a shipped template (by name) or of a template file (by path)."""
    given = str(name_or_path)
    shipped = TEMPLATE_DIR / f"{given}.txt"
    path = Path(given)
    if shipped.is_file() and path.name == given:
        path = shipped
    elif not path.is_file():
        raise FileNotFoundError(
            f"template {given!r} is neither a file nor a shipped template; shipped: {', '.join(list_templates())}"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"template {path} has no prompt lines")
    return lines


def render(template_line: str, name: str, filewords: str) -> str:
    """Fill one template line. ``[filewords]`` is replaced first, then ``[name]``, in the WebUI's order."""
    return template_line.replace("[filewords]", filewords).replace("[name]", name)


def process_tags(caption: str, shuffle: bool, dropout: float, keep_first: int, rng: random.Random,
                 separator: str = ",") -> str:
    """Drop and shuffle caption tags the way the WebUI and kohya do.

    Tags are split on ``separator`` and stripped. The first ``keep_first`` stay in place and are never dropped;
    each of the others is dropped with probability ``dropout``, then the survivors are shuffled. The result is
    joined with ``separator`` plus a space. With nothing to do the caption is returned unchanged.
    """
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    if keep_first < 0:
        raise ValueError(f"keep_first must be >= 0, got {keep_first}")
    if not shuffle and dropout == 0.0:
        return caption
    tags = [t.strip() for t in caption.split(separator)]
    tags = [t for t in tags if t]
    fixed, rest = tags[:keep_first], tags[keep_first:]
    if dropout > 0.0:
        rest = [t for t in rest if rng.random() >= dropout]
    if shuffle:
        rng.shuffle(rest)
    joiner = separator if separator.isspace() else separator.rstrip() + " "
    return joiner.join(fixed + rest)
