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
from .dreambooth.presets import DREAMBOOTH_PRESETS
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
from .training.task_presets import apply_task_preset
from .training.report import ConsoleReporter, Reporter
from .training.run_setup import run_dir_for, write_run_record


@dataclass(frozen=True)
class Trainer:
    """How one config type trains."""

    train: Callable  # (cfg, host, reporter) -> LoopResult
    command: str  # its scal-sdt sub-command (and a config file's "command")
    what: str  # what it makes, for messages: "embedding", "hypernetwork", "checkpoint"
    method: str  # the method's name in the run's record (run.json) and the data check: "embedding", "lora", ...
    #: None: the model's weights stay frozen. A trainer of the model's own weights says here whether ``cfg`` trains
    #: the text encoders too: on a host that outlives the run, those weights are kept and put back afterwards
    fine_tunes: Callable[[object], bool] | None = None
    #: the method's own preset, (cfg, options the user gave) -> cfg, applied before the memory preset
    preset: Callable[[object, set], object] | None = None
    #: the memory presets (card -> family -> options) where the method's memory differs from training/presets.py's
    memory_presets: dict | None = None


#: config type -> its trainer (a subclass of a config finds its base's); a new trainer is one line here
TRAINERS: dict[type, Trainer] = {
    EmbeddingConfig: Trainer(train_embedding, "train-embedding", "embedding", "embedding", preset=apply_apt_preset),
    HypernetworkConfig: Trainer(train_hypernetwork, "train-hypernetwork", "hypernetwork", "hypernetwork"),
    DreamBoothConfig: Trainer(train_dreambooth, "dreambooth", "checkpoint", "dreambooth",
                              fine_tunes=lambda cfg: cfg.train_text_encoder, memory_presets=DREAMBOOTH_PRESETS),
    # adapters around the layers: the model's weights are never written
    LoraConfig: Trainer(train_lora, "train-lora", "LoRA", "lora"),
}


def config_for_command(command: str) -> type:
    """The config type of a training sub-command ("train-embedding", ...)."""
    for kind, trainer in TRAINERS.items():
        if trainer.command == command:
            return kind
    raise ValueError(f"command must be one of {', '.join(t.command for t in TRAINERS.values())}, not {command!r}")


def trainer_for(cfg) -> Trainer:
    """The trainer of a config (or of a config type)."""
    for kind in (cfg if isinstance(cfg, type) else type(cfg)).__mro__:
        if kind in TRAINERS:
            return TRAINERS[kind]
    raise ValueError(f"no trainer for {getattr(cfg, '__name__', type(cfg).__name__)}; trainers exist for "
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
    cfg = resolve(cfg, family, device.type, given, say)
    outlives = host is not None if host_outlives_run is None else host_outlives_run
    if host is None:
        from .host.standalone import load_host
        from .training.control import install_signal_handlers

        install_signal_handlers()  # the run owns the process: SIGUSR1 saves, SIGUSR2 samples
        host = load_host(components, cfg.device, cfg.memory_mode, cfg.precision)
        host.source = cfg.model
    return Run(cfg, host, trainer, outlives)


def resolve(cfg, family: str, device_type: str, given=frozenset(), say: Callable[[str], None] = print):
    """``cfg`` with its presets applied for a ``family`` model on a ``device_type`` device: the task preset, the
    method's own preset (APT's), then the memory preset; options in ``given`` keep their value."""
    trainer = trainer_for(cfg)
    given = set(given)
    if cfg.task_preset:
        cfg = apply_task_preset(cfg, trainer.command, family, given)
        say(f"task preset {cfg.task_preset} for {family}: lr {cfg.lr}, {cfg.steps} steps")
    if trainer.preset is not None:
        cfg = trainer.preset(cfg, given)
    if cfg.preset:
        if device_type == "cpu":
            given |= {"precision"}  # reduced precision only slows a CPU down
        cfg = apply_preset(cfg, family, given, table=trainer.memory_presets)
        said = (f"preset {cfg.preset} for {family}: batch {cfg.batch_size} x {cfg.grad_accum}, {cfg.precision}, "
                f"memory {cfg.memory_mode}, checkpointing {cfg.gradient_checkpointing}")
        if trainer.memory_presets is not None:  # a fine-tune's presets choose what it holds, too
            said += (f", optimizer {cfg.optimizer}" + (" stepped in the backward pass" if cfg.fused_backward else "")
                     + f", {cfg.master_weights} weights")
        say(said)
    return cfg


def resolve_offline(cfg, explicit=None, say: Callable[[str], None] = print):
    """:func:`resolve` for ``cfg.model`` without loading it (its family read from the file's keys where it can be):
    what ``--save-config`` writes."""
    from .aesthetic.make import family_of
    from .host.placement import resolve_device

    given = set(changed_options(cfg) if explicit is None else explicit)
    return resolve(cfg, family_of(cfg.model).name, resolve_device(cfg.device).type, given, say)


#: the resolved options of every run, in its log folder
CONFIG_FILE = "config.toml"


def train(run: Run, reporter: Reporter | None = None) -> LoopResult:
    """Train ``run``; whatever happens, the host is put back as it was (hooks and switches off, and on a host that
    outlives the run, a fine-tune's weights). The run's resolved options are written to its log folder first
    (``config.toml``, or ``config.json`` without tomli-w: ``scal-sdt COMMAND --config`` runs it again)."""
    reporter = reporter or ConsoleReporter()
    host, cfg = run.host, run.cfg
    if distributed.current().main:
        from .config_files import write_config

        path = run_dir_for(cfg) / CONFIG_FILE
        try:
            import tomli_w  # noqa: F401  (install.py installs it in the WebUI; an offline install may lack it)
        except ImportError:
            path = path.with_suffix(".json")
            reporter.message(f"tomli-w is not installed (pip install tomli-w): the run's options go to {path.name}")
        write_config(path, dataclasses.replace(cfg, resume=False), run.trainer.command)
    fine_tunes = run.trainer.fine_tunes
    kept = (host.weights_kept(fine_tunes(cfg), spill_dir=run_dir_for(cfg))
            if fine_tunes is not None and run.host_outlives_run
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
