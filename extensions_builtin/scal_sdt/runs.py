"""The one path from a training config to a finished run. The command line, the standalone page, the WebUI's Train
tab and its API all set a run up here, so the same options give the same file from every entrance.

    run = runs.prepare(cfg, host)         # presets applied, device and seed per process, the model named
    result = runs.train(run, reporter)    # the registered trainer, then the host put back as it was

``prepare`` without a host loads ``cfg.model`` itself (the command line: the run owns the model). With a host (the
page's, the WebUI's), the host's device and memory mode stay its own, the run's metadata names the host's model, and
a trainer of the model's own weights (DreamBooth) puts them back when the run ends.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable

from .config import changed_options
from .dreambooth.config import DreamBoothConfig
from .dreambooth.trainer import train_dreambooth
from .host.base import Host
from .hypernetwork.config import HypernetworkConfig
from .hypernetwork.trainer import train_hypernetwork
from .lora.config import LoraConfig
from .lora.trainer import train_lora
from .textual_inversion.config import EmbeddingConfig, apply_apt_preset
from .textual_inversion.trainer import train_embedding
from .training import distributed
from .training.loop import LoopResult
from .training.presets import apply_preset
from .training.report import ConsoleReporter, Reporter
from .training.run_setup import run_dir_for, write_run_record


@dataclass(frozen=True)
class Trainer:
    """How one config type trains."""

    train: Callable  # (cfg, host, reporter) -> LoopResult
    what: str  # what it makes, for messages: "embedding", "hypernetwork", "checkpoint"
    method: str  # the method's name in the run's record (run.json) and the data check: "embedding", "lora", ...
    #: None: the model's weights stay frozen. A trainer of the model's own weights says here whether ``cfg`` trains
    #: the text encoders too: on a host that outlives the run, those weights are kept and put back afterwards
    fine_tunes: Callable[[object], bool] | None = None
    #: the method's own preset, (cfg, options the user gave) -> cfg, applied before the memory preset
    preset: Callable[[object, set], object] | None = None


#: config type -> its trainer (a subclass of a config finds its base's); a new trainer is one line here
TRAINERS: dict[type, Trainer] = {
    EmbeddingConfig: Trainer(train_embedding, "embedding", "embedding", preset=apply_apt_preset),
    HypernetworkConfig: Trainer(train_hypernetwork, "hypernetwork", "hypernetwork"),
    DreamBoothConfig: Trainer(train_dreambooth, "checkpoint", "dreambooth", fine_tunes=lambda cfg: cfg.train_text_encoder),
    LoraConfig: Trainer(train_lora, "LoRA", "lora"),  # adapters around the layers: the model's weights are never written
}


def trainer_for(cfg) -> Trainer:
    for kind in type(cfg).__mro__:
        if kind in TRAINERS:
            return TRAINERS[kind]
    raise ValueError(f"no trainer for {type(cfg).__name__}; trainers exist for "
                     f"{', '.join(k.__name__ for k in TRAINERS)}")


@dataclass
class Run:
    cfg: object  # the config as the run uses it: presets applied, this process's device and seed, the model named
    host: Host
    trainer: Trainer
    host_outlives_run: bool  # the caller's host (the page's, the WebUI's), not one loaded for this run


def prepare(cfg, host: Host | None = None, explicit=None, say: Callable[[str], None] = print,
            host_outlives_run: bool | None = None) -> Run:
    """``cfg`` made ready to train on ``host`` (None: a host loaded from ``cfg.model`` with the run's device, memory
    mode and precision).

    ``explicit``: the options the user gave, which no preset overrides; None: those that differ from their defaults
    (a form sends every field). ``say`` hears what a preset chose. ``host_outlives_run`` (default: whether a host
    was given) makes a fine-tune put the model's weights back when the run ends."""
    trainer = trainer_for(cfg)
    given = set(changed_options(cfg) if explicit is None else explicit)
    processes = distributed.current()
    if processes.distributed:  # accelerate / torchrun: each process its own GPU and its own draws
        cfg = dataclasses.replace(cfg, device=processes.device(cfg.device), seed=cfg.seed + processes.rank)
    if trainer.preset is not None:
        cfg = trainer.preset(cfg, given)
    components = None
    if host is None:
        from .host.placement import resolve_device
        from .host.standalone import load_components

        components = load_components(cfg.model)
        family, device = components.family.name, resolve_device(cfg.device)
    else:  # the host is loaded: its device and memory mode are its own; the metadata names its model
        cfg = dataclasses.replace(cfg, model=host.source or host.model_name)
        family, device = host.family.name, host.device
        given |= {"device", "memory_mode"}
    if cfg.preset:
        if device.type == "cpu":
            given |= {"precision"}  # reduced precision only slows a CPU down
        cfg = apply_preset(cfg, family, given)
        say(f"preset {cfg.preset} for {family}: batch {cfg.batch_size} x {cfg.grad_accum}, {cfg.precision}, "
            f"memory {cfg.memory_mode}, checkpointing {cfg.gradient_checkpointing}")
    outlives = host is not None if host_outlives_run is None else host_outlives_run
    if host is None:
        from .host.standalone import load_host
        from .training.control import install_signal_handlers

        install_signal_handlers()  # the run owns the process: SIGUSR1 saves, SIGUSR2 samples
        host = load_host(components, cfg.device, cfg.memory_mode, cfg.precision)
        host.source = cfg.model
    return Run(cfg, host, trainer, outlives)


def train(run: Run, reporter: Reporter | None = None) -> LoopResult:
    """Train ``run``; whatever happens, the host is put back as it was (hooks and switches off, and on a host that
    outlives the run, a fine-tune's weights)."""
    reporter = reporter or ConsoleReporter()
    host, cfg = run.host, run.cfg
    fine_tunes = run.trainer.fine_tunes
    kept = (host.weights_kept(fine_tunes(cfg)) if fine_tunes is not None and run.host_outlives_run
            else contextlib.nullcontext())
    if distributed.current().main:
        write_run_record(cfg, run.trainer.method, host)
    host.begin_training()
    try:
        with kept:
            result = run.trainer.train(cfg, host, reporter)
    finally:
        host.restore()
    if cfg.evaluate and distributed.current().main:
        from .evaluate.config import EvaluateConfig
        from .evaluate.run import evaluate_run

        # a fine-tune of a host loaded for the run changed it for good: the base model is loaded again to compare
        base = host if run.trainer.fine_tunes is None or run.host_outlives_run else None
        evaluate_run(EvaluateConfig(run_dir=str(run_dir_for(cfg)), device=cfg.device, memory_mode=cfg.memory_mode),
                     base, reporter.message)
    return result
