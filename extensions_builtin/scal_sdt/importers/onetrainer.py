"""OneTrainer's JSON (a preset from training_presets/, or a whole config the GUI saves): the options of its
modules/util/config/TrainConfig.py, with nested tables for the optimizer, the model parts (unet, text_encoder, vae),
the embedding and the concepts. Learnt from Nerogar/OneTrainer training_presets/*.json and TrainConfig.py (read,
not copied)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .concepts import ConceptTarget, Concepts, count_images
from .report import APPROXIMATED, MAPPED, UNSUPPORTED, ImportReport

METHODS = {"LORA": "train-lora", "EMBEDDING": "train-embedding", "FINE_TUNE": "dreambooth"}
OPTIMIZERS = {"ADAMW": "adamw", "ADAMW_8BIT": "adamw8bit", "ADAFACTOR": "adafactor", "PRODIGY": "prodigy",
              "LION": "lion", "LION_8BIT": "lion", "DADAPT_ADAM": "dadapt-adam", "CAME": "came",
              "SCHEDULE_FREE_ADAMW": "schedulefree-adamw"}
SCHEDULES = {"CONSTANT": "constant", "COSINE": "cosine", "COSINE_WITH_RESTARTS": "cosine_restarts",
             "COSINE_WITH_HARD_RESTARTS": "cosine_restarts"}
DTYPES = {"FLOAT_16": "fp16", "BFLOAT_16": "bf16", "FLOAT_32": "fp32"}
FAMILIES = ("STABLE_DIFFUSION_15", "STABLE_DIFFUSION_15_INPAINTING", "STABLE_DIFFUSION_20", "STABLE_DIFFUSION_21",
            "STABLE_DIFFUSION_20_BASE", "STABLE_DIFFUSION_21_BASE", "STABLE_DIFFUSION_XL_10_BASE")


#: a concept's options that are options of the whole run here: name -> (value, its text options) -> (status, how,
#: our options), or None (not supported)
RUN_WIDE = {
    "image.enable_random_flip": lambda v, text: (MAPPED, "", {"flip": bool(v)}),
    "image.enable_crop_jitter": lambda v, text: (APPROXIMATED, "a random crop of each image where it is larger "
                                                 "than its bucket", {"random_crop": bool(v)}),
    "text.enable_tag_shuffling": lambda v, text: (MAPPED, "", {"shuffle_tags": bool(v)}),
    "text.keep_tags_count": lambda v, text: (MAPPED, "", {"keep_tokens": int(v)}),
    "text.tag_delimiter": lambda v, text: (MAPPED, "tags are split at commas", {}) if str(v).strip() == "," else None,
    "text.tag_dropout_enable": lambda v, text: (MAPPED, "", {"tag_dropout": float(
        text.get("tag_dropout_probability", 0.0) or 0.0) if v else 0.0}),
    "text.tag_dropout_probability": lambda v, text: (MAPPED, "with tag_dropout_enable", {}),
}


def looks_like_onetrainer(data: dict) -> bool:
    return "training_method" in data or "model_type" in data or "base_model_name" in data


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("optimizer_defaults",):
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


class OneTrainerImport(ConceptTarget):
    def __init__(self, data: dict, report: ImportReport, command: str, base: Path):
        self.data, self.report, self.command, self.base = data, report, command, base
        self.ours: dict[str, Any] = {}
        self.images = 0
        self.concepts = Concepts()

    def set(self, key, value, status=MAPPED, how="", **ours):
        self.ours.update(ours)
        self.report.add(key, value, status, ours, how)

    def skip(self, key, value, why=""):
        self.report.add(key, value, UNSUPPORTED, {}, why)

    def run(self) -> dict:
        data = self.data
        items = _flatten({k: v for k, v in data.items() if k not in ("concepts",)})
        first = ("concepts", "concept_file_name", "batch_size", "epochs")
        items.sort(key=lambda kv: (kv[0] not in first, first.index(kv[0]) if kv[0] in first else 0))
        if "concepts" in data:
            self.read_concepts("concepts", data["concepts"])
        for key, value in items:
            self.handle(key, value)
        if self.command in ("train-lora", "dreambooth"):
            self.ours.setdefault("instance_prompt", "[filewords]")
        return self.ours

    def read_concepts(self, key, concepts):
        """Every enabled concept (an embedding: the first; it trains on one folder) with its repeats, loss weight
        and captions; a validation concept is the held-out folder; each concept's every key reported."""
        if not isinstance(concepts, list) or not concepts:
            return self.skip(key, concepts, "empty")
        entries = [(i, c) for i, c in enumerate(concepts) if isinstance(c, dict)]
        train = [(i, c) for i, c in entries if c.get("enabled", True) and not c.get("validation_concept")]
        embedding = self.command == "train-embedding"
        if not train:
            return self.skip(key, concepts, "no enabled concept")
        self.multi = not embedding and (len(train) > 1 or any(
            float(c.get("loss_weight", 1.0) or 1.0) != 1.0 for _, c in train))
        first = train[0][0]
        taken: dict[str, Any] = {}  # run-wide options from the first concept
        validation_taken = False
        for i, concept in entries:
            where = f"concepts[{i}]"
            items = _flatten(concept)
            if not concept.get("enabled", True):
                for name, value in items:
                    self.skip(f"{where}.{name}", value, "the concept is disabled in the file")
                continue
            if concept.get("validation_concept"):
                for name, value in items:
                    if name == "path" and not validation_taken:
                        validation_taken = True
                        self.set(f"{where}.{name}", value, APPROXIMATED, "the held-out images of the validation "
                                 "loss", validation_data=str(value))
                    elif name in ("validation_concept", "name", "enabled"):
                        self.set(f"{where}.{name}", value)
                    else:
                        self.skip(f"{where}.{name}", value, "a validation concept is only read for its images")
                continue
            if embedding and i != first:
                for name, value in items:
                    self.skip(f"{where}.{name}", value, "an embedding trains on one folder: queue one run per other "
                                                         "concept")
                continue
            self.one_concept(where, concept, items, taken, first=i == first)

    def one_concept(self, where: str, concept: dict, items: list, taken: dict, first: bool) -> None:
        folder = str(concept.get("path", ""))
        counted = count_images(folder)
        strategy = str(concept.get("balancing_strategy", "REPEATS"))
        balancing = float(concept.get("balancing", concept.get("repeats", 1.0)) or 1.0)
        repeats = balancing if strategy == "REPEATS" else (balancing / counted if counted else 1.0)
        index = self.concepts.add(folder, instance_prompt=None if self.command == "train-embedding" else "[filewords]",
                                  repeats=repeats if self.multi else None)
        self.images += round(counted * repeats)
        prompt_source = str(concept.get("text", {}).get("prompt_source", "sample"))
        for name, value in items:
            key = f"{where}.{name}"
            if name == "path":
                self.to_concept(key, value, index, MAPPED, instance_data=str(value))
            elif name in ("name", "enabled", "validation_concept"):
                self.set(key, value)
            elif name in ("repeats", "balancing"):
                if not self.multi:
                    self.set(key, value, APPROXIMATED, "repeats of a single folder only change what an epoch is; "
                             "used to turn epochs into steps")
                elif strategy == "REPEATS":
                    self.to_concept(key, value, index, MAPPED, "its images' share of the turns", repeats=repeats)
                else:
                    self.to_concept(key, value, index, APPROXIMATED, f"{balancing:g} samples an epoch of {counted} "
                                    "images here", repeats=repeats)
            elif name == "balancing_strategy":
                self.set(key, value, how="with balancing")
            elif name == "loss_weight":
                if self.multi:
                    self.to_concept(key, value, index, MAPPED, weight=float(value))
                else:
                    self.set(key, value, how="1: no weighting")
            elif name == "include_subdirectories":
                self.set(key, value, MAPPED if value else APPROXIMATED,
                         "" if value else "sub-folders are always read here (kohya's N_name folders among them)")
            elif name == "text.prompt_source":
                if value == "sample":
                    self.set(key, value, how="the .txt caption beside each image")
                elif value == "filename":
                    self.set(key, value, APPROXIMATED, "the file name is the caption where no .txt is beside the "
                             "image")
                else:
                    self.skip(key, value, "a prompt file per concept is not read: captions come from .txt files "
                                          "beside the images")
            elif name == "text.prompt_path" and prompt_source != "concept":
                self.set(key, value, how=f"unused with prompt_source {prompt_source}")
            elif name in RUN_WIDE:
                self.run_wide(key, name, value, taken, first, concept)
            else:
                self.skip(key, value)

    def run_wide(self, key: str, name: str, value: Any, taken: dict, first: bool, concept: dict) -> None:
        """A concept's augmentation or caption option that is one option of the whole run here: the first
        concept's is used, another's that differs is reported as not used."""
        if not first and name in taken:
            if taken[name] == value:
                return self.set(key, value, how="the same as the first concept's")
            return self.skip(key, value, f"the run uses the first concept's {name} = {taken[name]!r} for every "
                                         "concept")
        taken[name] = value
        mapped = RUN_WIDE[name](value, concept.get("text", {}))
        if mapped is None:
            return self.skip(key, value, "tags are split at commas here")
        status, how, ours = mapped
        self.set(key, value, status, how, **ours)

    def handle(self, key: str, value: Any) -> None:
        lora, fine_tune, embedding = (self.command == c for c in ("train-lora", "dreambooth", "train-embedding"))
        simple = {"learning_rate": ("lr", lambda v: repr(float(v))), "batch_size": ("batch_size", int),
                  "gradient_accumulation_steps": ("grad_accum", int), "learning_rate_warmup_steps":
                  ("warmup_steps", lambda v: int(float(v))), "learning_rate_cycles": ("lr_cycles",
                                                                                      lambda v: max(1, int(float(v)))),
                  "offset_noise_weight": ("noise_offset", float), "perturbation_noise_weight":
                  ("input_perturbation", float), "rescale_noise_scheduler_to_zero_terminal_snr":
                  ("zero_terminal_snr", bool), "aspect_ratio_bucketing": ("buckets", bool),
                  "base_model_name": ("model", str), "optimizer.weight_decay": ("weight_decay", float),
                  "seed": ("seed", int)}
        if lora:
            simple.update({"lora_rank": ("rank", int), "lora_alpha": ("alpha", float)})
        if embedding:
            simple.update({"embedding.token_count": ("vectors", int),
                           "embedding.initial_embedding_text": ("init_text", str),
                           "embedding.placeholder": ("name", lambda v: str(v).strip("<>"))})
        if key in simple:
            ours, kind = simple[key]
            try:
                return self.set(key, value, **{ours: kind(value)})
            except (TypeError, ValueError):
                return self.skip(key, value, "unreadable value")
        if key == "training_method":
            return self.set(key, value, how=f"scal-sdt {self.command}")
        if key == "model_type":
            if value in FAMILIES:
                return self.set(key, value, APPROXIMATED, "the family is read from the model file")
            return self.skip(key, value, "SD1, SD2 and SDXL are trained here")
        if key == "output_model_destination":
            path = Path(str(value))
            return self.set(key, value, APPROXIMATED, "its folder and file name", out=str(path.parent),
                            **({} if embedding and "name" in self.ours else {"name": path.stem}))
        if key == "output_model_format":
            if str(value) in ("SAFETENSORS", "KOHYA_LORA"):
                return self.set(key, value, how="a kohya-format .safetensors" if lora else "")
            return self.skip(key, value, "the result is written as .safetensors")
        if key == "epochs":
            epochs = int(value or 0)
            batch = int(self.data.get("batch_size", 1) or 1)
            if epochs and self.images:
                return self.set(key, value, APPROXIMATED, f"{epochs} epochs of {self.images} images at batch "
                                f"{batch}", steps=epochs * math.ceil(self.images / batch))
            return self.skip(key, value, "the concept folder is not here to count its images: give steps yourself")
        if key == "learning_rate_scheduler":
            if str(value) in SCHEDULES:
                return self.set(key, value, lr_schedule=SCHEDULES[str(value)])
            if str(value) in ("LINEAR", "REX"):
                return self.set(key, value, APPROXIMATED, "a cosine decay (there is no linear one here)",
                                lr_schedule="cosine")
            return self.skip(key, value)
        if key == "optimizer.optimizer":
            if str(value) in OPTIMIZERS:
                return self.set(key, value, optimizer=OPTIMIZERS[str(value)])
            return self.skip(key, value, "no such optimizer here; adamw is used")
        if key == "train_dtype":
            if str(value) in DTYPES:
                return self.set(key, value, precision=DTYPES[str(value)])
            return self.skip(key, value)
        if key == "resolution":
            sizes = [int(x) for x in str(value).replace("x", ",").split(",") if x.strip().isdigit()]
            if len(sizes) == 1:
                return self.set(key, value, resolution=sizes[0])
            if sizes:
                return self.set(key, value, APPROXIMATED, "several sizes in one run", resolutions=",".join(map(str, sizes)))
            return self.skip(key, value)
        if key == "gradient_checkpointing":
            on = str(value) in ("ON", "CPU_OFFLOADED", "True", "true")
            return self.set(key, value, APPROXIMATED if str(value) == "CPU_OFFLOADED" else MAPPED,
                            "checkpointing on; its activations stay on the card" if str(value) == "CPU_OFFLOADED"
                            else "", gradient_checkpointing=on)
        if key == "loss_weight_fn":
            strength = float(self.data.get("loss_weight_strength", 5.0) or 5.0)
            if str(value) == "MIN_SNR_GAMMA":
                return self.set(key, value, min_snr_gamma=strength)
            if str(value) == "DEBIASED_ESTIMATION":
                return self.set(key, value, debiased_estimation=True)
            if str(value) == "CONSTANT":
                return self.set(key, value, how="no weighting, as here by default")
            return self.skip(key, value)
        if key == "loss_weight_strength":
            return self.set(key, value, how="with loss_weight_fn")
        if key in ("huber_strength", "mse_strength", "mae_strength", "log_cosh_strength", "huber_delta"):
            return self.loss(key, value)
        if key in ("min_noising_strength", "max_noising_strength"):
            lo = float(self.data.get("min_noising_strength", 0.0) or 0.0)
            hi = float(self.data.get("max_noising_strength", 1.0) or 1.0)
            if (lo, hi) == (0.0, 1.0):
                return self.set(key, value, how="all timesteps, as here by default")
            return self.set(key, value, APPROXIMATED, "as timesteps of 1000", timestep_range=f"{round(lo * 1000)},"
                            f"{round(hi * 1000)}")
        if key == "timestep_distribution":
            if str(value) == "UNIFORM":
                return self.set(key, value, timestep_distribution="uniform")
            if str(value) == "LOGIT_NORMAL":
                return self.set(key, value, timestep_distribution="logit-normal")
            return self.skip(key, value)
        if key == "ema":
            if str(value) == "OFF":
                return self.set(key, value, how="no average, as here by default")
            return self.set(key, value, APPROXIMATED if str(value) == "CPU" else MAPPED,
                            "kept in the computer's memory" if str(value) == "CPU" else "",
                            ema_decay=float(self.data.get("ema_decay", 0.999)), ema_on_cpu=str(value) == "CPU")
        if key == "ema_decay":
            return self.set(key, value, how="with ema") if str(self.data.get("ema", "OFF")) != "OFF" else \
                self.skip(key, value, "ema is off")
        if key == "clip_grad_norm":
            if value:
                return self.set(key, value, clip_grad="norm", clip_value=float(value))
            return self.skip(key, value, "unset")
        if key == "masked_training":
            return self.set(key, value, APPROXIMATED, "masks are used whenever NAME_mask.png files are beside the "
                            "images") if value else self.skip(key, value, "unset")
        if key == "save_every":
            unit = str(self.data.get("save_every_unit", "NEVER"))
            if unit == "STEP" and value:
                return self.set(key, value, save_every=int(value))
            return self.skip(key, value, f"every {value} {unit.lower()}: saves are counted in steps here")
        if key == "sample_after":
            unit = str(self.data.get("sample_after_unit", "MINUTE"))
            if unit == "STEP" and value:
                return self.set(key, value, preview_every=int(value))
            return self.skip(key, value, f"every {value} {unit.lower()}: previews are counted in steps here")
        if key in ("text_encoder.train", "text_encoder.learning_rate", "text_encoder.stop_training_after") \
                and (lora or fine_tune):
            return self.text_encoder(key, value)
        if key == "concept_file_name":
            if "concepts" in self.data:
                return self.set(key, value, how="the concepts are inline in the file")
            path = Path(str(value))
            path = path if path.is_absolute() else self.base / path
            if path.is_file():
                self.report.add(key, value, MAPPED, {}, f"read {path}")
                return self.read_concepts("concepts", json.loads(path.read_text(encoding="utf-8")))
            return self.skip(key, value, f"{path} is not here: give the data folder yourself")
        if key == "peft_type" and lora:
            kinds = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}
            if str(value) in kinds:
                return self.set(key, value, network=kinds[str(value)])
            return self.skip(key, value, "a plain LoRA is trained")
        if key == "lora_decompose" and lora:
            return self.set(key, value, network="dora") if value else self.skip(key, value, "unset")
        self.skip(key, value)

    def loss(self, key, value):
        mse = float(self.data.get("mse_strength", 1.0) or 0.0)
        huber = float(self.data.get("huber_strength", 0.0) or 0.0)
        if key == "huber_delta":
            return self.set(key, value, APPROXIMATED, "the pseudo-Huber constant", huber_c=float(value)) if huber \
                else self.skip(key, value, "no Huber loss")
        if key in ("mae_strength", "log_cosh_strength"):
            return self.skip(key, value, "unset" if not value else "only mse and huber losses here")
        if huber and not mse:
            return self.set(key, value, loss="huber")
        if huber and mse:
            return self.set(key, value, APPROXIMATED, "a mix of mse and huber: huber alone (mse for small errors, "
                            "linear for large)", loss="huber")
        return self.set(key, value, loss="mse") if key == "mse_strength" else self.skip(key, value, "unset")

    def text_encoder(self, key, value):
        te = self.data.get("text_encoder", {})
        if key == "text_encoder.train":
            return self.set(key, value, train_text_encoder=bool(value))
        if key == "text_encoder.learning_rate":
            if value is None:
                return self.skip(key, value, "unset: the main rate applies")
            return self.set(key, value, text_encoder_lr=float(value))
        unit = str(te.get("stop_training_after_unit", "NEVER"))
        steps = self.ours.get("steps")
        if unit == "STEP" and value and steps:
            return self.set(key, value, APPROXIMATED, f"as a fraction of {steps} steps",
                            stop_text_encoder=min(1.0, int(value) / steps))
        if unit == "EPOCH" and value and self.data.get("epochs"):
            return self.set(key, value, APPROXIMATED, "as a fraction of the epochs",
                            stop_text_encoder=min(1.0, int(value) / int(self.data["epochs"])))
        self.skip(key, value, f"after {value} {unit.lower()}")


def import_onetrainer(path: Path, report: ImportReport) -> tuple[str, dict, Concepts | None]:
    data = json.loads(path.read_text(encoding="utf-8"))
    method = str(data.get("training_method", "FINE_TUNE"))
    if method not in METHODS:
        raise ValueError(f"{path}: training_method {method} has no counterpart here (LORA, EMBEDDING, FINE_TUNE do)")
    command = METHODS[method]
    report.source, report.command = f"{path} (OneTrainer)", command
    imp = OneTrainerImport(data, report, command, path.parent)
    return command, imp.run(), imp.concepts if imp.multi else None
