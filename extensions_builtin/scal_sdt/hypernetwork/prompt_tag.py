"""The WebUI applies hypernetworks named in the prompt as ``<hypernet:NAME:STRENGTH>`` (its extra-network syntax).
Our Settings picker adds that tag, so the WebUI's own machinery applies it, once."""
from __future__ import annotations

import re


def has_tag(prompt: str, name: str) -> bool:
    return re.search(r"<hypernet:" + re.escape(name) + r"(:[^>]*)?>", prompt) is not None


def with_hypernetwork(prompts: list[str], name: str, strength: float) -> list[str]:
    """Each prompt with ``<hypernet:name:strength>`` appended, unless it already names that hypernetwork (then the
    user's own tag wins and nothing is applied twice)."""
    tag = f"<hypernet:{name}:{strength:g}>"
    return [p if has_tag(p, name) else f"{p}{tag}" for p in prompts]
