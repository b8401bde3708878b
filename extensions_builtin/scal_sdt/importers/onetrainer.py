"""OneTrainer's JSON (a preset from training_presets/, or a whole config the GUI saves): the options of its
modules/util/config/TrainConfig.py, with nested tables for the optimizer, the model parts (unet, text_encoder, vae),
the embedding and the concepts. Learnt from Nerogar/OneTrainer training_presets/*.json and TrainConfig.py (read,
not copied)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..training.images import scan_folder
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


class OneTrainerImport:
    def __init__(self, data: dict, report: ImportReport, command: str, base: Path):
        self.data, self.report, self.command, self.base = data, report, command, base
        self.ours: dict[str, Any] = {}
        self.images = 0

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
            self.concepts("concepts", data["concepts"])
        for key, value in items:
            self.handle(key, value)
        if self.command in ("train-lora", "dreambooth"):
            self.ours.setdefault("instance_prompt", "[filewords]")
        return self.ours

    def concepts(self, key, concepts):
        if not isinstance(concepts, list) or not concepts:
            return self.skip(key, concepts, "empty")
        enabled = [c for c in concepts if isinstance(c, dict) and c.get("enabled", True)]
        if not enabled:
            return self.skip(key, concepts, "no enabled concept")
        concept = enabled[0]
        path = str(concept.get("path", ""))
        data_key = "data" if self.command == "train-embedding" else "instance_data"
        repeats = float(concept.get("repeats", 1.0) or 1.0)
        folder = Path(path)
        if folder.is_dir():
            self.images = round(sum(item.repeats for item in scan_folder(folder).items) * repeats)
        how = "the first enabled concept's folder; captions from its .txt files"
        if len(enabled) > 1:
            how += f"; {len(enabled) - 1} other concept(s) not trained: queue one run per concept"
        self.set(key, f"{len(concepts)} concept(s)", APPROXIMATED if len(enabled) > 1 else MAPPED, how,
                 **{data_key: path})

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
                return self.concepts("concepts", json.loads(path.read_text(encoding="utf-8")))
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


def import_onetrainer(path: Path, report: ImportReport) -> tuple[str, dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    method = str(data.get("training_method", "FINE_TUNE"))
    if method not in METHODS:
        raise ValueError(f"{path}: training_method {method} has no counterpart here (LORA, EMBEDDING, FINE_TUNE do)")
    command = METHODS[method]
    report.source, report.command = f"{path} (OneTrainer)", command
    return command, OneTrainerImport(data, report, command, path.parent).run()
