"""Task presets: what to learn (a character, an object, a style, a concept), for each trainer and model family.

A task preset sets the options that decide *what* is learned — learning rate and steps, vectors or rank, the prompt
template, flips, caption dropout, the loss weighting — and never those of the memory presets (batch, accumulation,
precision, checkpointing, memory mode), so the two combine: ``--task-preset style --preset 8gb``. Options the user
gives keep their value, as with the memory presets.

Why these values (the common advice of the trainers' own guides, kohya's and the WebUI's wiki, turned into one table):

- character: faces and outfits are not symmetric (no flips), the identity must hold across captions (the caption's
  words stay: no dropout), a few more steps than an object.
- object: one thing seen from several sides: flips help, fewer vectors / a lower rank suffice.
- style: the look of every picture, not one subject: the style templates, more vectors / a higher rank (LoCon, so
  the convolutions that carry texture learn too), offset noise for the tonal range, flips, more steps.
- concept: a pose, an action, a composition: caption dropout so it is learnt with and without its words, flips.

Per family: SDXL's two text encoders and wider layers take lower rates (TI, DreamBooth); SD2's v-prediction
DreamBooth a lower rate; min-SNR (gamma 5) everywhere the whole UNet or adapters learn.
"""
from __future__ import annotations

import dataclasses

TASKS = ("character", "object", "style", "concept")
FAMILIES = ("sd1", "sd2", "sdxl")

#: trainer (its sub-command) -> task -> {"all": options for every family, "sd2"/"sdxl": what differs}
TASK_PRESETS: dict[str, dict[str, dict[str, dict]]] = {
    "train-embedding": {
        "character": {"all": dict(vectors=4, template="subject_filewords", lr="0.005:500, 0.002", steps=2000,
                                  flip=False, shuffle_tags=True, keep_tokens=1),
                      "sdxl": dict(lr="0.003:500, 0.001")},
        "object": {"all": dict(vectors=2, template="subject_filewords", lr="0.005", steps=1500, flip=True),
                   "sdxl": dict(lr="0.003")},
        "style": {"all": dict(vectors=8, template="style_filewords", lr="0.003", steps=3000, flip=True,
                              shuffle_tags=True),
                  "sdxl": dict(lr="0.002")},
        "concept": {"all": dict(vectors=4, template="subject_filewords", lr="0.004", steps=2000, flip=True,
                                caption_dropout=0.1),
                    "sdxl": dict(lr="0.0025")},
    },
    "train-hypernetwork": {
        "character": {"all": dict(layer_structure="1, 2, 1", activation="linear", lr="5e-5:2000, 2e-5", steps=4000,
                                  template="subject_filewords", flip=False)},
        "object": {"all": dict(layer_structure="1, 2, 1", activation="linear", lr="5e-5", steps=3000,
                               template="subject_filewords", flip=True)},
        "style": {"all": dict(layer_structure="1, 1.5, 1.5, 1", activation="swish", layer_norm=True,
                              weight_init="XavierNormal", lr="2e-5", steps=6000, template="style_filewords",
                              flip=True, use_dropout=True)},
        "concept": {"all": dict(layer_structure="1, 2, 1", activation="relu", lr="3e-5", steps=4000,
                                template="filewords", flip=True, caption_dropout=0.1)},
    },
    "dreambooth": {
        "character": {"all": dict(lr="2e-6", steps=1200, flip=False, prior_loss_weight=1.0, train_text_encoder=True,
                                  text_encoder_lr=1e-6, stop_text_encoder=0.6, min_snr_gamma=5.0),
                      "sd2": dict(lr="1e-6"), "sdxl": dict(lr="1e-6", text_encoder_lr=5e-7)},
        "object": {"all": dict(lr="2e-6", steps=800, flip=True, prior_loss_weight=1.0, min_snr_gamma=5.0),
                   "sd2": dict(lr="1e-6"), "sdxl": dict(lr="1e-6")},
        "style": {"all": dict(lr="1e-6", steps=2000, flip=True, prior_loss_weight=0.5, min_snr_gamma=5.0,
                              noise_offset=0.05, caption_dropout=0.05),
                  "sdxl": dict(lr="5e-7")},
        "concept": {"all": dict(lr="2e-6", steps=1500, flip=True, prior_loss_weight=1.0, min_snr_gamma=5.0,
                                caption_dropout=0.1),
                    "sd2": dict(lr="1e-6"), "sdxl": dict(lr="1e-6")},
    },
    "train-lora": {
        "character": {"all": dict(network="lora", rank=16, alpha=8.0, lr="1e-4", steps=1500, flip=False,
                                  min_snr_gamma=5.0),
                      "sdxl": dict(rank=32, alpha=16.0)},
        "object": {"all": dict(network="lora", rank=8, alpha=4.0, lr="1e-4", steps=1000, flip=True,
                               min_snr_gamma=5.0)},
        "style": {"all": dict(network="locon", rank=32, alpha=16.0, conv_rank=8, conv_alpha=4.0, train_convs=True,
                              lr="1e-4", steps=3000, flip=True, min_snr_gamma=5.0, noise_offset=0.05,
                              caption_dropout=0.05)},
        "concept": {"all": dict(network="lora", rank=16, alpha=8.0, lr="1e-4", steps=2000, flip=True,
                                min_snr_gamma=5.0, caption_dropout=0.1)},
    },
}


def task_overrides(command: str, task: str, family: str) -> dict:
    """The options ``task`` sets for the trainer ``command`` on a ``family`` model; raises naming the choices."""
    if task not in TASKS:
        raise ValueError(f"task_preset must be one of {', '.join(TASKS)}, not {task!r}")
    if command not in TASK_PRESETS:
        raise ValueError(f"no task presets for {command}; they exist for {', '.join(TASK_PRESETS)}")
    if family not in FAMILIES:
        raise ValueError(f"task_preset {task!r} has no settings for model family {family!r}; families are "
                         f"{', '.join(FAMILIES)}")
    table = TASK_PRESETS[command][task]
    return {**table["all"], **table.get(family, {})}


def apply_task_preset(cfg, command: str, family: str, explicit=frozenset()):
    """``cfg`` with its ``task_preset``'s options for ``family`` filled in, except those in ``explicit``."""
    if not getattr(cfg, "task_preset", ""):
        return cfg
    values = {k: v for k, v in task_overrides(command, cfg.task_preset, family).items() if k not in explicit}
    return dataclasses.replace(cfg, **values)
