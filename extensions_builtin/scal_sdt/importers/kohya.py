"""kohya's options: the kohya_ss GUI's saved JSON and sd-scripts' ``--config_file`` TOML use the same names (the
scripts' argparse options: ``learning_rate``, ``network_dim``, ``train_batch_size``...); the GUI adds a few of its
own (``LoRA_type``, ``epoch``, ``max_resolution``, ``lr_warmup`` in percent). sd-scripts' TOML may group them in
tables (``[model_arguments]``), which the scripts flatten, and may name a dataset TOML (``[general]``,
``[[datasets]]``, ``[[datasets.subsets]]``, see its docs/config_README) read here too.

Learnt from bmaltais/kohya_ss presets/ and kohya-ss/sd-scripts docs/config_README-en.md and train_network.py's
arguments (read, not copied)."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # the WebUI's Python 3.10
    import tomli as tomllib

from .concepts import ConceptTarget, Concepts, count_images
from .report import APPROXIMATED, MAPPED, UNSUPPORTED, ImportReport
from .sd_scripts_dataset import read_dataset_toml
from .values import as_float, as_int, key_values

OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "pagedadamw8bit": "adamw8bit", "adafactor": "adafactor",
              "prodigy": "prodigy", "lion": "lion", "lion8bit": "lion", "dadaptadam": "dadapt-adam",
              "dadaptation": "dadapt-adam", "came": "came", "adamwschedulefree": "schedulefree-adamw"}
SCHEDULES = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine",
             "cosine_with_restarts": "cosine_restarts"}
GUI_NETWORKS = {"standard": "lora", "kohya locon": "locon", "lycoris/locon": "locon", "lora-c3lier": "locon",
                "lycoris/loha": "loha", "lycoris/lokr": "lokr"}
LYCORIS_ALGOS = {"lora": "lora", "locon": "locon", "loha": "loha", "lokr": "lokr", "dora": "dora"}
LOSSES = {"l2": "mse", "huber": "huber", "smooth_l1": "smooth-l1"}


def read_sd_scripts_toml(path: Path) -> dict:
    """sd-scripts' --config_file: its tables are flattened, as the scripts do."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def target_command(options: dict) -> str:
    """Which of our trainers the file trains with: a network -> LoRA, token options -> embedding, else DreamBooth."""
    if any(k in options for k in ("network_module", "LoRA_type", "network_dim")):
        return "train-lora"
    if any(k in options for k in ("token_string", "init_word", "num_vectors_per_token")):
        return "train-embedding"
    return "dreambooth"


class KohyaImport(ConceptTarget):
    """The flat kohya options -> our options of ``command``, every key reported; a dataset TOML's subsets -> our
    concepts (``concepts``, written as a concepts JSON when ``multi``)."""

    def __init__(self, options: dict, report: ImportReport, command: str, base: Path):
        self.src, self.report, self.command, self.base = dict(options), report, command, base
        self.ours: dict[str, Any] = {}
        self.concepts = Concepts()
        self.images = 0  # images x repeats of the data folder(s), for epochs -> steps
        self.batch = max(1, as_int(options.get("train_batch_size")) or 1)

    # -- helpers ------------------------------------------------------------------------------------------------
    def set(self, key: str, value: Any, status: str = MAPPED, how: str = "", **ours) -> None:
        self.ours.update(ours)
        self.report.add(key, value, status, ours, how)

    def skip(self, key: str, value: Any, why: str = "") -> None:
        self.report.add(key, value, UNSUPPORTED, {}, why)

    @property
    def data_key(self) -> str:
        return "data" if self.command == "train-embedding" else "instance_data"

    def count_images(self, folder: str) -> int:
        return count_images(folder)

    # -- the table ----------------------------------------------------------------------------------------------
    def handlers(self) -> dict[str, Callable[[str, Any], None]]:
        rename = self.rename
        h: dict[str, Callable[[str, Any], None]] = {
            "pretrained_model_name_or_path": rename("model", str),
            "output_name": rename("name", str),
            "output_dir": rename("out", str),
            "train_data_dir": self.train_data_dir,
            "reg_data_dir": self.reg_data_dir,
            "logging_dir": self.logging_dir,
            "learning_rate": self.learning_rate,
            "unet_lr": self.unet_lr,
            "text_encoder_lr": self.text_encoder_lr,
            "max_train_steps": self.max_train_steps,
            "epoch": self.epochs, "max_train_epochs": self.epochs,
            "train_batch_size": rename("batch_size", int),
            "gradient_accumulation_steps": rename("grad_accum", int),
            "mixed_precision": self.precision,
            "optimizer": self.optimizer, "optimizer_type": self.optimizer,
            "optimizer_args": self.optimizer_args,
            "lr_scheduler": self.scheduler,
            "lr_scheduler_num_cycles": rename("lr_cycles", int),
            "lr_warmup_steps": rename("warmup_steps", int),
            "lr_warmup": self.warmup_percent,
            "seed": rename("seed", int),
            "save_every_n_steps": rename("save_every", int),
            "save_every_n_epochs": self.save_every_epochs,
            "min_snr_gamma": rename("min_snr_gamma", float),
            "noise_offset": rename("noise_offset", float),
            "multires_noise_iterations": rename("multires_noise_iterations", int),
            "multires_noise_discount": rename("multires_noise_discount", float),
            "debiased_estimation_loss": rename("debiased_estimation", bool),
            "loss_type": self.loss_type,
            "huber_c": rename("huber_c", float),
            "zero_terminal_snr": rename("zero_terminal_snr", bool),
            "ip_noise_gamma": rename("input_perturbation", float),
            "min_timestep": self.timesteps, "max_timestep": self.timesteps,
            "shuffle_caption": rename("shuffle_tags", bool),
            "keep_tokens": rename("keep_tokens", int),
            "caption_dropout_rate": rename("caption_dropout", float),
            "caption_tag_dropout_rate": rename("tag_dropout", float),
            "flip_aug": rename("flip", bool),
            "random_crop": rename("random_crop", bool),
            "color_aug": self.color_aug,
            "enable_bucket": rename("buckets", bool),
            "resolution": self.resolution, "max_resolution": self.resolution,
            "gradient_checkpointing": rename("gradient_checkpointing", bool),
            "max_grad_norm": self.max_grad_norm,
            "cache_latents": self.always("latents are always cached"),
            "cache_latents_to_disk": self.always("latents are cached in memory for the run"),
            "v2": self.from_model, "v_parameterization": self.from_model, "sdxl": self.from_model,
            "caption_extension": self.caption_extension,
            "sample_prompts": self.sample_prompts,
            "sample_every_n_steps": rename("preview_every", int),
            "xformers": self.always("attention is the host's: the WebUI's own setting, PyTorch's SDPA standalone"),
            "sdpa": self.always("attention is the host's: the WebUI's own setting, PyTorch's SDPA standalone"),
            "mem_eff_attn": self.always("attention is the host's: the WebUI's own setting, PyTorch's SDPA standalone"),
            "max_token_length": self.always("long captions are encoded in 75-token chunks, as the WebUI does"),
            "dataset_config": self.dataset_config,
        }
        if self.command in ("train-lora", "dreambooth"):
            h.update({"prior_loss_weight": rename("prior_loss_weight", float),
                      "stop_text_encoder_training_pct": self.stop_te_pct,
                      "stop_text_encoder_training": self.stop_te_steps,
                      "instance_prompt": rename("instance_prompt", str),
                      "class_prompt": rename("class_prompt", str)})
        if self.command == "train-lora":
            h.update({"network_dim": rename("rank", int), "network_alpha": rename("alpha", float),
                      "conv_dim": self.conv("conv_rank", int), "conv_alpha": self.conv("conv_alpha", float),
                      "rank_dropout": rename("rank_dropout", float), "module_dropout": rename("module_dropout", float),
                      "LoRA_type": self.lora_type, "network_module": self.network_module,
                      "network_args": self.network_args, "factor": rename("lokr_factor", int),
                      "dora_wd": self.dora, "block_dims": rename("block_dims", str),
                      "training_comment": rename("training_comment", str),
                      "network_train_unet_only": self.unet_only, "network_train_text_encoder_only": self.te_only,
                      "save_model_as": self.save_model_as})
        if self.command == "dreambooth":
            h.update({"full_bf16": self.full_bf16, "save_precision": self.save_precision})
        if self.command == "train-embedding":
            h.update({"token_string": rename("name", str), "init_word": rename("init_text", str),
                      "num_vectors_per_token": rename("vectors", int),
                      "use_object_template": self.template("subject_filewords"),
                      "use_style_template": self.template("style_filewords"),
                      "save_model_as": self.save_model_as})
        return h

    def run(self) -> dict:
        handlers = self.handlers()
        # the data first (epochs need its size), the network before its args
        order = ["dataset_config", "train_data_dir", "train_batch_size", "max_train_steps", "LoRA_type",
                 "network_module"]
        keys = [k for k in order if k in self.src] + [k for k in self.src if k not in order]
        for key in keys:
            value = self.src[key]
            handler = handlers.get(key)
            if handler is None:
                self.skip(key, value)
            else:
                handler(key, value)
        if self.command in ("train-lora", "dreambooth") and "instance_prompt" not in self.ours and not self.multi:
            self.ours["instance_prompt"] = "[filewords]"
            self.report.add("(captions)", "", APPROXIMATED, {"instance_prompt": "[filewords]"},
                            "kohya trains on each image's caption: our prompt is the caption alone")
        return self.ours

    # -- handlers -----------------------------------------------------------------------------------------------
    def rename(self, ours: str, kind: type) -> Callable[[str, Any], None]:
        def handle(key, value):
            if value in ("", None):
                self.skip(key, value, "empty")
                return
            try:
                converted = kind(value) if kind is not bool else (value if isinstance(value, bool)
                                                                  else str(value).lower() in ("true", "1", "yes"))
                if kind is int:
                    converted = as_int(value)
                    if converted is None:
                        raise ValueError
            except (TypeError, ValueError):
                self.skip(key, value, f"not a {kind.__name__}")
                return
            self.set(key, value, **{ours: converted})
        return handle

    def always(self, how: str) -> Callable[[str, Any], None]:
        return lambda key, value: self.set(key, value, APPROXIMATED, how)

    def from_model(self, key, value):
        self.set(key, value, APPROXIMATED, "the family and prediction type are read from the model file")

    def train_data_dir(self, key, value):
        if not value:
            return self.skip(key, value, "empty")
        self.images = self.count_images(str(value))
        how = "kohya's N_name sub-folders repeat their images N times here too"
        self.set(key, value, how=how, **{self.data_key: str(value)})

    def reg_data_dir(self, key, value):
        if not value or self.command == "train-embedding":
            return self.skip(key, value, "empty" if not value else "an embedding has no prior preservation")
        self.set(key, value, APPROXIMATED, "the class images folder (filled up to num_class_images with what the "
                 "model draws for class_prompt; kohya's N_ repeats there are not used)", class_data=str(value))

    def logging_dir(self, key, value):
        if not value:
            return self.skip(key, value, "empty")
        self.set(key, value, APPROXIMATED, "our log folder: loss.csv, plot, previews, checkpoints (and TensorBoard "
                 "events with the [tensorboard] extra)", log_dir=str(value))

    def learning_rate(self, key, value):
        if as_float(value) is None:
            return self.skip(key, value, "not a number")
        if self.command == "train-lora" and as_float(self.src.get("unet_lr")):
            return self.set(key, value, APPROXIMATED, "unet_lr is given and wins, as in kohya's scripts")
        self.set(key, value, lr=repr(float(value)))

    def unet_lr(self, key, value):
        if not as_float(value):
            return self.skip(key, value, "unset: learning_rate applies")
        self.set(key, value, lr=repr(float(value)))

    def text_encoder_lr(self, key, value):
        if self.command == "train-embedding":
            return self.skip(key, value, "an embedding trains no text encoder weights")
        rate = as_float(value)
        if rate is None:
            return self.skip(key, value, "not a number")
        train = rate > 0 and not self.src.get("network_train_unet_only")
        if rate == 0:
            return self.set(key, value, APPROXIMATED, "0: the text encoder stays frozen (kohya's scripts would "
                            "train it at learning_rate)", train_text_encoder=False)
        self.set(key, value, text_encoder_lr=rate, train_text_encoder=train)

    def unet_only(self, key, value):
        if value:
            return self.set(key, value, train_text_encoder=False)
        self.set(key, value, how="the text encoder trains when text_encoder_lr is above 0")

    def te_only(self, key, value):
        if value:
            return self.skip(key, value, "our LoRA always trains the UNet")
        self.set(key, value)

    def max_train_steps(self, key, value):
        steps = as_int(value)
        if not steps:
            return self.skip(key, value, "unset: the epochs decide")
        self.set(key, value, steps=steps)

    def epochs(self, key, value):
        epochs = as_int(value)
        if not epochs:
            return self.skip(key, value, "unset")
        if "steps" in self.ours:
            return self.set(key, value, APPROXIMATED, "max_train_steps is given and wins")
        if self.images:
            steps = epochs * math.ceil(self.images / self.batch)
            return self.set(key, value, APPROXIMATED, f"{epochs} epochs of {self.images} images (repeats counted) "
                            f"at batch {self.batch}", steps=steps)
        self.skip(key, value, "the data folder is not here to count its images: give steps yourself")

    def precision(self, key, value):
        mapping = {"fp16": "fp16", "bf16": "bf16", "no": "fp32", "fp32": "fp32"}
        if str(value).lower() not in mapping:
            return self.skip(key, value)
        self.set(key, value, precision=mapping[str(value).lower()])

    def optimizer(self, key, value):
        ours = OPTIMIZERS.get(re.sub(r"[^a-z0-9]", "", str(value).lower()))
        if ours is None:
            return self.skip(key, value, f"no such optimizer here; the default {'adamw'} is used")
        self.set(key, value, optimizer=ours)

    def optimizer_args(self, key, value):
        args = key_values(value)
        if not args:
            return self.skip(key, value, "empty")
        used = {}
        if "weight_decay" in args and as_float(args["weight_decay"]) is not None:
            used["weight_decay"] = float(args["weight_decay"])
        rest = sorted(set(args) - {"weight_decay"})
        if not used:
            return self.skip(key, value, "none of these arguments has a counterpart")
        self.set(key, value, APPROXIMATED if rest else MAPPED,
                 f"weight_decay taken; not supported: {', '.join(rest)}" if rest else "", **used)

    def scheduler(self, key, value):
        name = str(value).lower()
        if name in SCHEDULES:
            return self.set(key, value, MAPPED if name != "constant_with_warmup" else APPROXIMATED,
                            "" if name != "constant_with_warmup" else "constant after lr_warmup_steps",
                            lr_schedule=SCHEDULES[name])
        if name in ("linear", "polynomial"):
            return self.set(key, value, APPROXIMATED, "a cosine decay from the rate (there is no linear one here)",
                            lr_schedule="cosine")
        self.skip(key, value, "no such schedule here")

    def warmup_percent(self, key, value):
        pct = as_float(value)
        if not pct:
            return self.skip(key, value, "unset")
        steps = self.ours.get("steps")
        if not steps:
            return self.skip(key, value, "a percentage of a step count that is not known here")
        self.set(key, value, APPROXIMATED, f"{pct:g}% of {steps} steps", warmup_steps=round(steps * pct / 100))

    def save_every_epochs(self, key, value):
        epochs = as_int(value)
        if not epochs or not self.images:
            return self.skip(key, value, "unset" if not epochs else "the data folder is not here to count epochs")
        self.set(key, value, APPROXIMATED, "in steps", save_every=epochs * math.ceil(self.images / self.batch))

    def loss_type(self, key, value):
        ours = LOSSES.get(str(value).lower())
        if ours is None:
            return self.skip(key, value)
        self.set(key, value, loss=ours)

    def timesteps(self, key, value):
        if "timestep_range" in self.ours:
            return self.set(key, value, how="with the other end")
        lo, hi = as_int(self.src.get("min_timestep", 0)) or 0, as_int(self.src.get("max_timestep", 1000)) or 1000
        if (lo, hi) == (0, 1000):
            return self.set(key, value, how="all timesteps, as here by default")
        self.set(key, value, timestep_range=f"{lo},{hi}")

    def color_aug(self, key, value):
        if not value:
            return self.skip(key, value, "unset")
        self.set(key, value, APPROXIMATED, "kohya shifts the hue; here brightness, contrast and saturation vary by "
                 "10%", color_jitter=0.1)

    def resolution(self, key, value):
        sizes = [int(x) for x in re.findall(r"\d+", str(value))] if not isinstance(value, list) else value
        if not sizes:
            return self.skip(key, value, "empty")
        if len(set(sizes)) == 1:
            return self.set(key, value, resolution=int(sizes[0]))
        side = int(round(math.sqrt(sizes[0] * sizes[1]) / 64) * 64)
        self.set(key, value, APPROXIMATED, f"a {side}px square of the same area (with buckets the aspect follows "
                 "the images)", resolution=side)

    def max_grad_norm(self, key, value):
        norm = as_float(value)
        if not norm:
            return self.set(key, value, clip_grad="none")
        self.set(key, value, clip_grad="norm", clip_value=norm)

    def caption_extension(self, key, value):
        if str(value) in (".txt", "txt", ""):
            return self.set(key, value, how="captions are .txt files beside the images here")
        self.skip(key, value, "captions are read from .txt files")

    def sample_prompts(self, key, value):
        text = str(value or "")
        path = Path(text) if text and len(text) < 4096 else None
        if path is not None and not path.is_absolute():
            path = self.base / path
        if path is not None and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
        prompts = [re.split(r"\s--\w", line)[0].strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            return self.skip(key, value, "empty")
        self.set(key, value, APPROXIMATED, "the prompts of the preview grid; their --n/--w/--h/--s options are "
                 "not used (previews use the preview_* options)", preview_prompt=" | ".join(prompts[:4]))

    def stop_te_pct(self, key, value):
        pct = as_float(value)
        if not pct:
            return self.skip(key, value, "unset")
        self.set(key, value, stop_text_encoder=min(1.0, pct / 100))

    def stop_te_steps(self, key, value):
        stop, steps = as_int(value), self.ours.get("steps")
        if not stop or not steps:
            return self.skip(key, value, "unset" if not stop else "a step count of an unknown length")
        self.set(key, value, APPROXIMATED, f"as a fraction of {steps} steps", stop_text_encoder=min(1.0, stop / steps))

    def conv(self, ours: str, kind: type):
        def handle(key, value):
            number = as_float(value)
            if not number or self.ours.get("network", "lora") == "lora":
                return self.skip(key, value, "unset" if not number else "a plain LoRA has no convolution adapters")
            self.set(key, value, **{ours: kind(number)})
        return handle

    def lora_type(self, key, value):
        ours = GUI_NETWORKS.get(str(value).lower())
        if ours is None:
            return self.skip(key, value, "no such network here: a plain LoRA is trained")
        self.set(key, value, network=ours)

    def network_module(self, key, value):
        module = str(value)
        if module == "networks.lora":
            algo = "locon" if as_float(key_values(self.src.get("network_args")).get("conv_dim")) else "lora"
            return self.set(key, value, network=algo)
        if module == "lycoris.kohya":
            algo = key_values(self.src.get("network_args")).get("algo", "lora").lower()
            if algo in LYCORIS_ALGOS:
                return self.set(key, value, network=LYCORIS_ALGOS[algo])
            return self.skip(key, value, f"LyCORIS {algo} is not trained here: a plain LoRA is")
        self.skip(key, value, "no such network module here: a plain LoRA is trained")

    def network_args(self, key, value):
        args = key_values(value)
        if not args:
            return self.skip(key, value, "empty")
        used, rest = {}, []
        for k, v in args.items():
            if k == "conv_dim" and as_int(v):
                used["conv_rank"] = as_int(v)
            elif k == "conv_alpha" and as_float(v) is not None:
                used["conv_alpha"] = float(v)
            elif k == "algo" and v.lower() in LYCORIS_ALGOS:
                pass  # taken with network_module
            elif k == "factor" and as_int(v) is not None:
                used["lokr_factor"] = as_int(v)
            elif k in ("rank_dropout", "module_dropout") and as_float(v) is not None:
                used[k] = float(v)
            elif k == "dora_wd" and v.lower() == "true":
                used["network"] = "dora"
            else:
                rest.append(f"{k}={v}")
        self.set(key, value, APPROXIMATED if rest else MAPPED,
                 f"not supported: {', '.join(rest)}" if rest else "", **used)

    def dora(self, key, value):
        if not value:
            return self.skip(key, value, "unset")
        self.set(key, value, network="dora")

    def save_model_as(self, key, value):
        if str(value).lower() == "safetensors":
            return self.set(key, value)
        if self.command == "train-embedding" and str(value).lower() == "pt":
            return self.set(key, value, format="pt")
        self.skip(key, value, "the result is written as .safetensors")

    def full_bf16(self, key, value):
        if not value:
            return self.skip(key, value, "unset")
        self.set(key, value, master_weights="bf16")

    def save_precision(self, key, value):
        name = str(value).lower()
        if name in ("fp16", "float", "fp32"):
            return self.set(key, value, save_fp16=name == "fp16")
        self.skip(key, value, "the checkpoint is saved in fp16 or fp32")

    def template(self, name: str):
        def handle(key, value):
            if not value:
                return self.skip(key, value, "unset")
            self.set(key, value, template=name)
        return handle

    def dataset_config(self, key, value):
        path = Path(str(value))
        if not path.is_absolute():
            path = self.base / path
        if not path.is_file():
            return self.skip(key, value, f"the dataset file {path} is not here: pass it with --dataset-config")
        self.report.add(key, value, MAPPED, {}, f"read {path}")
        read_dataset_toml(path, self)


def import_kohya(path: Path, report: ImportReport, dataset: Path | None = None) -> tuple[str, dict, Concepts | None]:
    """A kohya_ss GUI .json or an sd-scripts .toml -> (our command, our options, the concepts when several)."""
    import json

    if path.suffix.lower() == ".toml":
        options = read_sd_scripts_toml(path)
        report.source = f"{path} (sd-scripts)"
    else:
        options = json.loads(path.read_text(encoding="utf-8"))
        report.source = f"{path} (kohya_ss GUI)"
    if dataset is not None:
        options["dataset_config"] = str(dataset)
    command = target_command(options)
    report.command = command
    imp = KohyaImport(options, report, command, path.parent)
    return command, imp.run(), imp.concepts if imp.multi else None


def looks_like_kohya(data: dict) -> bool:
    return any(k in data for k in ("pretrained_model_name_or_path", "train_data_dir", "network_dim", "LoRA_type",
                                   "output_name", "dataset_config", "learning_rate")) and "training_method" not in data

