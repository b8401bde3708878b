"""Train a hypernetwork: the model stays frozen; the residual MLPs on every attention's keys and values learn.

As the WebUI does, the conditioning is computed once per caption and reused when tags are neither shuffled nor
dropped (the text encoder then leaves the device), dropout is active while training and the strength is ignored.
Results are the WebUI's ``.pt`` (+ ``.pt.optim``), written atomically.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import mention, to_dict, turn_on
from ..host.attention import context_widths
from ..host.base import Conditioning, Host
from ..training.checkpoints import CheckpointStore
from ..training.dataset import LatentDataset
from ..training.frozen_job import FrozenModelJob
from ..training.loop import LoopResult, run_on_host
from ..training.optimizers import LR_FREE, OPTIMIZER_CLASSES
from ..training.report import ConsoleReporter, Reporter
from ..training.run_setup import prepare_data, run_dir_for
from ..training.templates import load_template, render
from ..training.validation import heldout_loss
from .apply import hooks_for
from .config import HypernetworkConfig, safe_lr
from .format import load_hypernetwork, load_optimizer_state, save_hypernetwork
from .module import Hypernetwork, create_hypernetwork, parse_structure

COND_CACHE_LIMIT = 4096  # cached conditionings (one per distinct prompt)


def hypernetwork_path(out: Path, name: str) -> Path:
    return Path(out) / f"{name}.pt"


@dataclass
class HypernetworkJob(FrozenModelJob):
    cfg: HypernetworkConfig
    host: Host
    dataset: LatentDataset
    hypernetwork: Hypernetwork
    templates: list[str]
    run_dir: Path
    validation: LatentDataset | None = None

    start_step: int = 0  # continuing a hypernetwork file: its step count so far
    start_optimizer: dict | None = None  # and its optimizer state (.pt.optim), when the hash matched

    def __post_init__(self):
        self.start_generators()
        self.cache_conditioning = not self.cfg.shuffle_tags and self.cfg.tag_dropout == 0
        self._cond: dict[tuple[str, tuple[int, int]], Conditioning] = {}
        self.optimizer = None
        self.hooks = hooks_for(self.host)

    def bind_optimizer(self, optimizer) -> None:
        self.optimizer = optimizer
        if self.start_optimizer is not None:
            optimizer.load_state_dict(self.start_optimizer)

    def param_groups(self):
        return [{"params": self.hypernetwork.parameters()}]

    @contextlib.contextmanager
    def applied(self, training: bool):
        """The hypernetwork on the model for one forward (dropout on and strength ignored while training)."""
        self.hypernetwork.train(training)
        self.hooks.set(self.hypernetwork, 1.0)
        try:
            yield
        finally:
            self.hooks.unset(self.name)

    @torch.no_grad()
    def conditioning(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        """The frozen text encoder's output; cached per prompt when the prompts repeat (no tag shuffling)."""
        if not self.cache_conditioning:
            with self.host.on_device("text"):
                return self.host.encode_prompts(prompts, size=size)
        missing = [p for p in dict.fromkeys(prompts) if (p, size) not in self._cond]
        if missing:
            if len(self._cond) + len(missing) > COND_CACHE_LIMIT:
                self._cond.clear()
            with self.host.on_device("text"):
                for p in missing:
                    self._cond[(p, size)] = self.host.encode_prompts([p], size=size)
        rows = [self._cond[(p, size)] for p in prompts]
        if len({r.context.shape[1] for r in rows}) > 1:  # prompts of different lengths: one padded batch
            with self.host.on_device("text"):
                return self.host.encode_prompts(prompts, size=size)
        return Conditioning.cat(rows)

    def loss(self) -> torch.Tensor:
        """The step's loss. The hypernetwork is left on the model (in training mode) until a preview, a validation
        or the run's end takes it off: with gradient checkpointing the backward pass runs the blocks' forward again,
        and that must see the same hooks as the first forward did (or torch's checkpoint fails)."""
        nb = self.noised_batch()
        cond = self.conditioning(self.prompts_for(nb.batch.captions), nb.size)
        self.hypernetwork.train(True)
        self.hooks.set(self.hypernetwork, 1.0)
        with self.host.on_device("unet"):
            out = self.host.predict(nb.x_t, nb.t, cond)
        return self.objective(nb, out)

    def stamped(self, step: int) -> Hypernetwork:
        hn = self.hypernetwork
        hn.step = self.start_step + step
        hn.sd_checkpoint, hn.sd_checkpoint_name = self.host.model_hash, self.host.model_name
        hn.optional_info = json.dumps({"trainer": "scal-sdt", "options": to_dict(self.cfg)})
        return hn

    def save(self, step: int, final: bool) -> Path:
        if final:
            path = hypernetwork_path(Path(self.cfg.out), self.name)
        else:
            path = self.run_dir / "hypernetworks" / f"{self.name}-{step}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
        optimizer = None
        if self.optimizer is not None:
            optimizer = {"optimizer_name": type(self.optimizer).__name__,
                         "optimizer_state_dict": self.optimizer.state_dict()}
        return save_hypernetwork(self.stamped(step), path, optimizer)

    @torch.no_grad()
    def preview(self, step: int):
        with self.applied(training=False):
            return self.preview_grid(step, self.host.sample)

    def validation_loss(self) -> float | None:
        with self.applied(training=False):
            return self.validation_mean(lambda latents, prompts, masks: heldout_loss(
                self.host, latents, prompts, seed=self.cfg.seed, objective=self.objective, masks=masks))


def new_hypernetwork(cfg: HypernetworkConfig, host: Host) -> Hypernetwork:
    widths = cfg.size_list() or context_widths(host.kv_projections())
    return create_hypernetwork(cfg.name, widths, cfg.layer_structure, cfg.activation, cfg.weight_init,
                               cfg.layer_norm, cfg.activate_output, cfg.use_dropout, cfg.last_layer_dropout,
                               cfg.dropout_structure or None, seed=cfg.seed)


def prepare_job(cfg: HypernetworkConfig, host: Host, reporter: Reporter) -> HypernetworkJob:
    out = hypernetwork_path(Path(cfg.out), cfg.name)
    if out.exists() and not cfg.resume and not cfg.overwrite:
        raise FileExistsError(f"hypernetwork {cfg.name!r} already exists ({out}); choose another name, "
                              f"{turn_on('overwrite')} to replace it, or {turn_on('resume')} to continue its run")
    if cfg.lr.strip().lower() == "auto" and cfg.optimizer not in LR_FREE:  # those take their own 1.0
        lr = safe_lr(parse_structure(cfg.layer_structure), sum(host.widths.values()))
        cfg = dataclasses.replace(cfg, lr=f"{lr:.3g}")
        reporter.message(f"learning rate {cfg.lr}: the safe default for structure {cfg.layer_structure} on a "
                         f"{sum(host.widths.values())}-wide context ({mention('find_lr')} measures one on your data)")
    resolution = cfg.resolution or host.native_resolution
    dataset, validation = prepare_data(cfg, host, reporter, resolution)
    continuing = cfg.resume and out.exists() and not CheckpointStore(run_dir_for(cfg)).complete()
    if continuing:  # the WebUI's way: train an existing hypernetwork further, with its optimizer state
        hn, start_optimizer = continue_from_file(out, reporter, cfg.optimizer)
        cfg = dataclasses.replace(cfg, resume=False)
    else:
        hn, start_optimizer = new_hypernetwork(cfg, host), None
    model_widths = set(context_widths(host.kv_projections()))
    unused = sorted(set(hn.widths) - model_widths)
    if unused:
        reporter.message(f"sizes {unused} match no attention layer of {host.model_name} (its widths: "
                         f"{sorted(model_widths)}); those layers will not train")
    hn.to(host.device)
    templates = load_template(cfg.template)
    reporter.message(f"training hypernetwork {cfg.name!r} (structure {hn.structure}, {hn.activation}, widths "
                     f"{hn.widths}, {sum(p.numel() for p in hn.parameters()):,} parameters) on {host.model_name} "
                     f"[{host.family.name}, {host.device}], {len(dataset.items)} images at {resolution}px")
    return HypernetworkJob(cfg, host, dataset, hn, templates, run_dir_for(cfg), validation,
                           start_step=hn.step if continuing else 0, start_optimizer=start_optimizer)


def continue_from_file(path: Path, reporter: Reporter, optimizer: str = "adamw") -> tuple[Hypernetwork, dict | None]:
    """An existing ``NAME.pt`` (ours or the WebUI's) and its optimizer state when ``.pt.optim`` still matches it."""
    hn = load_hypernetwork(path)
    saved = load_optimizer_state(path)
    state = saved.get("optimizer_state_dict") if saved else None
    if saved and saved.get("optimizer_name", "AdamW").lower() != OPTIMIZER_CLASSES[optimizer].lower():
        reporter.message(f"{path.name}.optim holds a {saved['optimizer_name']} state; {optimizer} starts fresh")
        state = None
    if state and sum(len(g["params"]) for g in state.get("param_groups", [])) != len(hn.parameters()):
        reporter.message(f"{path.name}.optim does not fit the file's layers; the optimizer starts fresh")
        state = None
    reporter.message(f"continuing {path} from its step {hn.step} (structure {hn.structure}, {hn.activation}, widths "
                     f"{hn.widths}; the file's structure wins over the form's), optimizer state "
                     f"{'restored' if state else 'fresh'}")
    return hn, state


def train_hypernetwork(cfg: HypernetworkConfig, host: Host, reporter: Reporter | None = None) -> LoopResult:
    """Create (or resume) the hypernetwork ``cfg.name`` and train it on ``cfg.data``."""
    reporter = reporter or ConsoleReporter()
    job = prepare_job(cfg, host, reporter)
    try:
        return run_on_host(job.cfg, job, job.run_dir, reporter, host)
    finally:
        job.hooks.unset(cfg.name)


def find_learning_rate(cfg: HypernetworkConfig, host: Host, reporter: Reporter | None = None, steps: int = 60):
    """``--find-lr``: an LR range test on this data, model and structure; writes ``find_lr.csv`` / ``.png`` into
    the run folder and returns the :class:`~..training.find_lr.RangeTest` (its ``proposal`` is the rate to use)."""
    from ..training.find_lr import lr_range_test

    reporter = reporter or ConsoleReporter()
    job = prepare_job(dataclasses.replace(cfg, overwrite=True), host, reporter)
    batches = [job.dataset.next_batch() for _ in range(max(1, 4 // cfg.batch_size))]
    batches = [b for b in batches if b.latents.shape[1:] == batches[0].latents.shape[1:]]  # one bucket
    probe_latents = torch.cat([b.latents for b in batches])
    probe_prompts = [render(job.templates[0], job.name, c) for b in batches for c in b.captions]

    def probe() -> float:
        with job.applied(training=False):
            return heldout_loss(host, probe_latents, probe_prompts, seed=cfg.seed)

    try:
        result = lr_range_test(job.hypernetwork.parameters(), job.loss, probe, steps=steps)
    finally:
        job.hooks.unset(cfg.name)
    csv_path, png_path = result.write(job.run_dir)
    reporter.message(f"learning-rate range test over {len(result.lrs)} steps: probe loss {result.start:.5f} before, "
                     f"lowest {min(result.probe):.5f}; proposed lr {result.proposal:.2g} ({csv_path}, {png_path})")
    return result
