"""sd-scripts' dataset TOML (``--dataset_config``: ``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``, see its
docs/config_README-en.md), read into a kohya import: the first dataset's first training subset is the data, a
regularisation subset the class images, and every other key is reported (``datasets[1].subsets[0].image_dir``)."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the WebUI's Python 3.10
    import tomli as tomllib

from .report import APPROXIMATED
from .values import as_int


def read_dataset_toml(path: Path, imp) -> None:
    """sd-scripts' dataset TOML: the first dataset's first training subset is the data, its regularisation subset
    the class images; each other key is reported like the main file's (``datasets[0].subsets[1].image_dir``)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    general = data.get("general", {})
    datasets = data.get("datasets", [])
    flat: list[tuple[str, Any]] = [(f"general.{k}", v) for k, v in general.items()]
    for i, ds in enumerate(datasets):
        for k, v in ds.items():
            if k != "subsets":
                flat.append((f"datasets[{i}].{k}", v))
        for j, sub in enumerate(ds.get("subsets", [])):
            flat += [(f"datasets[{i}].subsets[{j}].{k}", v) for k, v in sub.items()]
    train = [(i, j) for i, ds in enumerate(datasets) for j, sub in enumerate(ds.get("subsets", []))
             if not sub.get("is_reg")]
    first = train[0] if train else None
    reg = next(((i, j) for i, ds in enumerate(datasets) for j, sub in enumerate(ds.get("subsets", []))
                if sub.get("is_reg")), None)
    handlers = imp.handlers()
    shared = {"batch_size": "train_batch_size"}
    for name, value in flat:
        where, _, key = name.rpartition(".")
        m = re.match(r"datasets\[(\d+)\](?:\.subsets\[(\d+)\])?", where)
        ds, sub = (int(m.group(1)), None if m.group(2) is None else int(m.group(2))) if m else (None, None)
        if ds not in (None, first[0] if first else 0) or (sub is not None and (ds, sub) not in (first, reg)):
            imp.skip(name, value, "only the first dataset's first subset (and a regularisation subset) are "
                                  "trained: queue one run per other subset")
            continue
        if (ds, sub) == reg and reg is not None:
            if key == "image_dir":
                imp.set(name, value, APPROXIMATED, "the class images folder", class_data=str(value))
            elif key == "class_tokens":
                imp.set(name, value, class_prompt=str(value))
            elif key == "is_reg":
                imp.set(name, value)
            else:
                imp.skip(name, value, "per-subset settings of the class images are not used")
            continue
        if key == "image_dir":
            imp.set(name, value, **{imp.data_key: str(value)})
            repeats = as_int(datasets[ds]["subsets"][sub].get("num_repeats", 1)) or 1
            imp.images = imp.count_images(str(value)) * repeats
        elif key == "num_repeats":
            imp.set(name, value, APPROXIMATED, "repeats of a single folder only change what an epoch is; used to "
                    "turn epochs into steps")
        elif key == "class_tokens" and imp.command != "train-embedding":
            imp.set(name, value, APPROXIMATED, "kohya uses the class tokens where an image has no caption; here "
                    "they start every prompt, before the caption", instance_prompt=f"{value}, [filewords]")
        elif key in ("is_reg",):
            imp.set(name, value)
        elif key in shared:
            handlers[shared[key]](name, value)
            imp.batch = max(1, as_int(value) or 1)
        elif key in handlers:
            handlers[key](name, value)
        else:
            imp.skip(name, value)
