"""kohya's ``ss_*`` metadata of a LoRA file: what the WebUI's Lora metadata panel, Civitai and kohya's tools show
(network type, dim and alpha, base model, tag frequency, steps, training settings)."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

#: kohya's ss_base_model_version per family
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
#: ss_network_module: plain LoRA and LoCon are kohya's own module, the rest LyCORIS' kohya entry point
NETWORK_MODULE = {"lora": "networks.lora", "locon": "networks.lora", "loha": "lycoris.kohya",
                  "lokr": "lycoris.kohya", "dora": "lycoris.kohya"}


def family_of(meta: dict[str, str]) -> str:
    """The family a file says it is for ('' when it does not say)."""
    version = str(meta.get("ss_base_model_version", ""))
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2") or str(meta.get("ss_v2", "")) == "True":
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    return ""


def tag_frequency(datasets: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per data folder, how often each comma-separated caption tag occurs."""
    return {folder: dict(Counter(t.strip() for c in captions for t in c.split(",") if t.strip()))
            for folder, captions in datasets.items()}


def lora_metadata(cfg, *, family: str, model_name: str, model_hash: str, steps: int, datasets: dict[str, list[str]],
                  n_reg: int, started: float, resolution: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``ss_*`` header of a trained LoRA (values are strings, as safetensors metadata must be)."""
    from ..config import to_dict

    args = {"algo": cfg.network} if NETWORK_MODULE[cfg.network] == "lycoris.kohya" else {}
    if cfg.convs:
        args.update({"conv_dim": str(cfg.conv_rank or cfg.rank), "conv_alpha": f"{cfg.conv_alpha or cfg.alpha:g}"})
    if cfg.network == "dora":
        args.update({"algo": "lora", "dora_wd": "True", "wd_on_output": "False"})
    if cfg.rank_dropout:
        args["rank_dropout"] = f"{cfg.rank_dropout:g}"
    if cfg.module_dropout:
        args["module_dropout"] = f"{cfg.module_dropout:g}"
    if cfg.block_dims:
        args["block_dims"] = cfg.block_dims
    if cfg.block_lrs:
        args["block_lr_weight"] = cfg.block_lrs
    meta = {
        "ss_network_module": NETWORK_MODULE[cfg.network],
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.rank) if cfg.network == "dora" else f"{cfg.alpha:g}",  # DoRA: folded into up
        "ss_network_args": json.dumps(args),
        "ss_network_dropout": "None",
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": str(family == "sd2"),
        "ss_sd_model_name": model_name,
        "ss_sd_model_hash": model_hash[:8],
        "ss_new_sd_model_hash": model_hash,
        "ss_output_name": cfg.name,
        "ss_training_comment": cfg.training_comment,
        "ss_steps": str(steps),
        "ss_max_train_steps": str(cfg.steps),
        "ss_epoch": "1",
        "ss_learning_rate": str(cfg.lr),
        "ss_unet_lr": str(cfg.lr),
        "ss_text_encoder_lr": f"{cfg.text_encoder_lr:g}" if cfg.train_text_encoder else "None",
        "ss_lr_scheduler": cfg.lr_schedule,
        "ss_lr_warmup_steps": str(cfg.warmup_steps),
        "ss_optimizer": cfg.optimizer,
        "ss_batch_size_per_device": str(cfg.batch_size),
        "ss_gradient_accumulation_steps": str(cfg.grad_accum),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": str(cfg.buckets),
        "ss_seed": str(cfg.seed),
        "ss_mixed_precision": cfg.precision,
        "ss_noise_offset": f"{cfg.noise_offset:g}" if cfg.noise_offset else "None",
        "ss_min_snr_gamma": f"{cfg.min_snr_gamma:g}" if cfg.min_snr_gamma else "None",
        "ss_prior_loss_weight": f"{cfg.prior_loss_weight:g}",
        "ss_num_train_images": str(sum(len(c) for c in datasets.values())),
        "ss_num_reg_images": str(n_reg),
        "ss_dataset_dirs": json.dumps({Path(d).name: {"n_repeats": 1, "img_count": len(c)}
                                       for d, c in datasets.items()}),
        "ss_tag_frequency": json.dumps({Path(d).name: f for d, f in tag_frequency(datasets).items()}),
        "ss_training_started_at": f"{started:.0f}",
        "ss_training_finished_at": f"{time.time():.0f}",
        "ss_shuffle_caption": str(cfg.shuffle_tags),
        "ss_keep_tokens": str(cfg.keep_tokens),
        "ss_flip_aug": str(cfg.flip),
        "modelspec.architecture": {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2",
                                   "sdxl": "stable-diffusion-xl-v1-base"}[family] + "/lora",
        "modelspec.title": cfg.name,
        "scal_sdt": json.dumps(to_dict(cfg)),
    }
    meta.update(extra or {})
    return meta
