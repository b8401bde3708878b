"""The library: every model file in a set of folders, described (``identify``), with its fit to the loaded model, and
searched and filtered. What is on disk is kept apart from what is loaded: nothing here applies anything."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write_text
from .identify import PICKLES, inspect_file, summary

SUFFIXES = (*PICKLES, ".safetensors", ".png", ".webp")
#: what a user does with each kind (the guide's words)
USE = {"embedding": "write its name in the prompt", "hypernetwork": "pick it in Settings → SCAL-SDT (or "
       "<hypernet:NAME:1> in the prompt)", "lora": "<lora:NAME:1> in the prompt",
       "lycoris": "<lora:NAME:1> in the prompt", "checkpoint": "switch to it (top left in the WebUI)",
       "aesthetic-embedding": "pick it in txt2img's aesthetic-gradients accordion"}


@dataclass
class Item:
    path: Path
    info: dict  # inspect_file's description
    fit: bool | None = None  # fits the loaded model; None: no model to compare with, or not a question for this kind
    why: str = ""  # the mismatch's reason (or a note)
    previews: dict = field(default_factory=dict)  # label -> image path ("without", "with 0.5", "with 1")

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def kind(self) -> str:
        return self.info["kind"]

    def text(self) -> str:
        """Everything a search looks at: name, kind, family, details and metadata."""
        return " ".join([self.name, self.kind, self.info["family"], summary(self.info),
                         json.dumps(self.info.get("metadata", {}), default=str)]).lower()

    def row(self) -> dict:
        return {"name": self.name, "file": str(self.path), "kind": self.kind, "family": self.info["family"],
                "fit": self.fit, "why": self.why, "details": self.info.get("details", {}),
                "metadata": self.info.get("metadata", {}), "webui_safe": self.info.get("webui_safe"),
                "use": USE.get(self.kind, ""), "previews": {k: str(v) for k, v in self.previews.items()}}


def model_files(folders: list[str | Path]) -> list[Path]:
    """The candidate files under ``folders`` (recursively), without the WebUI's ``*.preview.png`` cards."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"library folder {folder} does not exist")
        found += [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in SUFFIXES
                  and not p.name.lower().endswith((".preview.png", ".preview.webp"))]
    return found


def scan(folders: list[str | Path], host=None, report=print) -> list[Item]:
    """Every model file in ``folders``, described, with its fit to ``host`` (when given). Pictures that hold no
    embedding are left out; another unreadable file is listed as unknown with the reason."""
    items = []
    for path in model_files(folders):
        info = inspect_file(path)
        if info["kind"] == "unknown" and path.suffix.lower() in (".png", ".webp"):
            continue  # just a picture
        item = Item(path, info)
        if host is not None:
            item.fit, item.why = fit(info, host)
        items.append(item)
    return items


def select(items: list[Item], search: str = "", kind: str = "", fits_only: bool = False) -> list[Item]:
    """The items whose text holds every word of ``search``, of ``kind`` ('' any; 'lora' takes LyCORIS too), and
    (``fits_only``) that fit the model."""
    words = search.lower().split()
    kinds = {"lora": ("lora", "lycoris")}.get(kind, (kind,)) if kind else ()
    return [i for i in items if (not kinds or i.kind in kinds) and (not fits_only or i.fit)
            and all(w in i.text() for w in words)]


# ----------------------------------------------------------------------------------------------------- fit
def context_width(host) -> int:
    """The UNet's cross-attention context width: the text encoders' widths side by side (SDXL: 768 + 1280)."""
    return sum(host.widths.values())


def fit(info: dict, host) -> tuple[bool | None, str]:
    """Whether the file works with ``host`` and, when not, why (in the words a user acts on)."""
    kind, family, d = info["kind"], info["family"], info.get("details", {})
    ours = host.family.name
    if kind == "embedding":
        widths = d["widths"]
        if "*" in widths:
            if len(host.widths) != 1:
                return False, (f"one vector set of width {widths['*']}; this {ours} model has {len(host.widths)} "
                               f"text encoders ({', '.join(f'{k} {w}' for k, w in host.widths.items())})")
            want = next(iter(host.widths.values()))
            if widths["*"] != want:
                return False, f"width {widths['*']} ({family}); this model's text encoder is {want} wide ({ours})"
            return True, ""
        wrong = {k: w for k, w in widths.items() if host.widths.get(k) != w}
        if set(widths) != set(host.widths) or wrong:
            return False, (f"vectors for {', '.join(f'{k} {w}' for k, w in widths.items())}; this model has "
                           f"{', '.join(f'{k} {w}' for k, w in host.widths.items())} ({ours})")
        return True, ""
    if kind == "hypernetwork":
        width = context_width(host)
        if width not in d["widths"]:
            return False, (f"its layers are for context widths {', '.join(map(str, d['widths']))} ({family}); this "
                           f"model's cross-attention context is {width} wide ({ours})")
        return True, ""
    if kind in ("lora", "lycoris"):
        return _lora_fit(info, host)
    if kind == "aesthetic-embedding":
        if family == "unknown":
            return None, "its CLIP encoder does not say the family"
        return (True, "") if family == ours else (False, f"made with {family}'s image encoders; this model is {ours}")
    if kind == "checkpoint":
        return None, f"a whole {family} model: switch to it" + (f" ({d['problem']})" if d.get("problem") else "")
    return None, info.get("why", "")


def _lora_fit(info: dict, host) -> tuple[bool, str]:
    from safetensors import safe_open
    from torch import nn

    ours, family = host.family.name, info["family"]
    if family not in ("unknown", ours):
        return False, f"a LoRA for {family} ({info['details'].get('family_from', '')}); this model is {ours}"
    path = Path(info["file"])
    if path.suffix.lower() != ".safetensors":
        return False, "the WebUI reads LoRAs from .safetensors (and .pt/.ckpt of kohya's layout): rename it to load"
    targets = host.lora_targets()
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    modules = sorted({k.split(".", 1)[0] for k in shapes if k.startswith("lora_") and "." in k})
    missing = [m for m in modules if m not in targets]
    if missing:
        return False, (f"{len(missing)} of its {len(modules)} layers are not in this model ({missing[0]}, …): "
                       "a LoRA for another model")
    for m in modules:
        down, layer = shapes.get(m + ".lora_down.weight"), targets[m]
        if down is not None and isinstance(layer, nn.Linear) and down[1] != layer.in_features:
            return False, f"{m} takes {down[1]} inputs; this model's layer takes {layer.in_features}"
    return True, ""


# ------------------------------------------------------------------------------------------------- hashes
def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """The file's sha256, remembered in ``cache_dir/hashes.json`` by (path, size, mtime) so a big file is read once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir / "hashes.json" if cache_dir else None
    known = {}
    if store is not None and store.is_file():
        try:
            known = json.loads(store.read_text())
        except ValueError:
            known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        known[key] = digest
        atomic_write_text(store, json.dumps(known, indent=0, sort_keys=True))
    return digest
