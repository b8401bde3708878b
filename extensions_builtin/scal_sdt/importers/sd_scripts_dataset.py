"""sd-scripts' dataset TOML (``--dataset_config``: ``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``, see its
docs/config_README-en.md), read into a kohya import. Every training subset of every dataset is a concept (its folder,
num_repeats, class_tokens, caption_extension), written as our concepts JSON when there are several; the first
regularisation subset is the class images of all of them (kohya mixes them into every batch). Options of one dataset
or subset are the run's options, taken from the first; another's that differs is reported as not used."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the WebUI's Python 3.10
    import tomli as tomllib

from .concepts import count_images
from .report import APPROXIMATED, MAPPED
from .values import as_float

#: subset keys that belong to one concept; the others are the run's (shuffle_caption, keep_tokens, flip_aug...)
CONCEPT_KEYS = ("image_dir", "num_repeats", "class_tokens", "caption_extension", "is_reg")
SHARED = {"batch_size": "train_batch_size"}  # dataset keys under another name in the training options


def dotted(extension: Any) -> str:
    """kohya accepts ``txt`` and ``.txt`` alike."""
    text = str(extension)
    return text if text.startswith(".") else f".{text}"


def read_dataset_toml(path: Path, imp) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    datasets = [ds for ds in data.get("datasets", []) if isinstance(ds, dict)]
    subsets = [(i, j, sub) for i, ds in enumerate(datasets) for j, sub in enumerate(ds.get("subsets", []))
               if isinstance(sub, dict)]
    train = [(i, j, sub) for i, j, sub in subsets if not sub.get("is_reg")]
    reg = [(i, j, sub) for i, j, sub in subsets if sub.get("is_reg")]
    general = data.get("general", {})
    embedding = imp.command == "train-embedding"
    imp.multi = not embedding and (len(train) > 1 or any(
        dotted(sub.get("caption_extension", general.get("caption_extension", ".txt"))) != ".txt"
        for _, _, sub in train))
    handlers = imp.handlers()
    taken: dict[str, Any] = {}  # run-wide option -> the value the first dataset / subset gave

    def run_option(name: str, key: str, value: Any, first: bool, whose: str) -> None:
        if first or key not in taken:
            taken[key] = value
            before = len(imp.report.entries)
            run_wide(name, key, value)
            if whose == "subset" and imp.multi:  # kohya: that subset's alone; here: the run's
                for entry in imp.report.entries[before:]:
                    if entry.status == MAPPED:
                        entry.status = APPROXIMATED
                        entry.how = "; ".join(filter(None, [entry.how, "one option of the whole run here: every "
                                                                        "concept gets it"]))
        elif taken[key] == value:
            imp.set(name, value, how=f"the same as given first ({whose} options are the run's here)")
        else:
            imp.skip(name, value, f"the run uses {key} = {taken[key]!r} (given first) for every concept")

    def run_wide(name: str, key: str, value: Any) -> None:
        if key in SHARED:
            handlers[SHARED[key]](name, value)
            imp.batch = max(1, int(as_float(value) or 1))
        elif key in handlers:
            handlers[key](name, value)
        else:
            imp.skip(name, value)

    for key, value in general.items():
        if key == "caption_extension" and imp.multi:
            imp.set(f"general.{key}", value, how="each concept's caption extension, where its subset sets none")
        elif key not in CONCEPT_KEYS:
            run_option(f"general.{key}", key, value, True, "file")
    for i, ds in enumerate(datasets):
        for key, value in ds.items():
            if key != "subsets":
                run_option(f"datasets[{i}].{key}", key, value, i == 0, "dataset")

    # the concepts: each training subset (an embedding: the first; it trains on one folder)
    for n, (i, j, sub) in enumerate(train):
        where = f"datasets[{i}].subsets[{j}]"
        if embedding and n > 0:
            for key, value in sub.items():
                imp.skip(f"{where}.{key}", value, "an embedding trains on one folder: queue one run per other subset")
            continue
        folder = str(sub.get("image_dir", ""))
        repeats = as_float(sub.get("num_repeats", 1)) or 1.0
        index = imp.concepts.add(folder, instance_prompt=None if embedding else "[filewords]",
                                 repeats=repeats if imp.multi else None,
                                 caption_extension=dotted(general.get("caption_extension", ".txt")) if imp.multi
                                 else None)
        imp.images += round(count_images(folder) * repeats)
        for key, value in sub.items():
            name = f"{where}.{key}"
            if key == "image_dir":
                imp.to_concept(name, value, index, MAPPED, instance_data=str(value))
            elif key == "num_repeats":
                if imp.multi:
                    imp.to_concept(name, value, index, MAPPED, "its images' share of the turns against the other "
                                   "concepts, as kohya's epochs count them", repeats=repeats)
                else:
                    imp.set(name, value, APPROXIMATED, "repeats of a single folder only change what an epoch is; "
                            "used to turn epochs into steps")
            elif key == "class_tokens" and not embedding:
                imp.to_concept(name, value, index, APPROXIMATED, "kohya uses the class tokens where an image has no "
                               "caption; here they start every prompt, before the caption",
                               instance_prompt=f"{value}, [filewords]")
            elif key == "caption_extension":
                if imp.multi:
                    imp.to_concept(name, value, index, MAPPED, caption_extension=dotted(value))
                else:
                    handlers["caption_extension"](name, value)
            elif key == "is_reg":
                imp.set(name, value)
            else:
                run_option(name, key, value, n == 0, "subset")

    # the class images: the first regularisation subset, for every concept
    for n, (i, j, sub) in enumerate(reg):
        where = f"datasets[{i}].subsets[{j}]"
        if embedding or n > 0:
            for key, value in sub.items():
                imp.skip(f"{where}.{key}", value, "an embedding has no prior preservation" if embedding else
                         "one folder of class images is used (the first regularisation subset's)")
            continue
        folder = str(sub.get("image_dir", ""))
        have = count_images(folder)
        for key, value in sub.items():
            name = f"{where}.{key}"
            if key == "image_dir":
                keys = {"class_data": folder, "class_prompt": str(sub.get("class_tokens") or "[filewords]")}
                if have:
                    keys["num_class_images"] = have
                imp.to_concept(name, value, None, APPROXIMATED, "the class images of every concept, one batch of "
                               "them with each batch of a concept" + (f" ({have} here: none is generated)" if have
                                                                      else "; more are drawn up to num_class_images "
                                                                           "if the folder holds fewer"), **keys)
            elif key == "class_tokens":
                imp.set(name, value, how="the class images' prompt (with image_dir)")
            elif key == "num_repeats":
                imp.set(name, value, APPROXIMATED, "class images come one batch with each instance batch, whatever "
                        "their repeats")
            elif key == "is_reg":
                imp.set(name, value)
            else:
                imp.skip(name, value, "per-subset settings of the class images are not used")
