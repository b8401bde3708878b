"""The one training loop. A trainer says what it optimises, how it computes its loss and how it saves;
the loop owns steps, accumulation, precision, clipping, checkpoints, previews, progress and interrupt, and asks
the NaN guard (``nan_guard.py``) about every step."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from . import distributed
from .checkpoints import CheckpointError, CheckpointStore
from .control import ControlChannel
from .ema import EMA
from .fused import FP16_START_SCALE, FusedBackward
from .lr import lr_at
from .nan_guard import NanGuard, TrainingDiverged, finite_gradients
from .objective import knob_summary
from .optimizers import effective_lr, evaluating, make_optimizer
from .options import TrainingOptions
from .report import Reporter
from .run_log import RunLog
from .tensorboard import TensorBoardLog
from .state import rng_state, set_rng_state


class TrainingJob(Protocol):
    name: str

    def param_groups(self) -> list[dict]:
        """Torch parameter groups; an optional ``lr_scale`` per group multiplies the scheduled rate."""

    def loss(self) -> torch.Tensor:
        """Draw the next micro-batch and return its mean loss (a scalar with a graph to the parameters)."""

    def save(self, step: int, final: bool) -> Path:
        """Write the result at ``step`` (a checkpoint copy, or the final file when ``final``)."""

    def preview(self, step: int) -> tuple[list[Image.Image], list[Path]]: ...

    def state_dict(self) -> dict:
        """What besides the parameters must be restored for an exact resume (data order, generators)."""

    def load_state_dict(self, state: dict) -> None: ...

    def validation_loss(self) -> float | None:
        """Loss on held-out images at fixed timesteps, noises and seed (None when there is no validation set)."""

    # optional: bind_optimizer(optimizer) is called once with the loop's optimizer;
    # after_step(step) after every good optimizer step


@dataclass
class LoopResult:
    step: int
    final_path: Path | None
    interrupted: bool
    losses: list[float]
    bad_steps: int


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def _params(groups: list[dict]) -> list[torch.Tensor]:
    return [p for g in groups for p in g["params"]]


def run_loop(opts: TrainingOptions, job: TrainingJob, run_dir: Path, reporter: Reporter, device: torch.device,
             autocast=None) -> LoopResult:
    on_exit: list = []  # what must be undone however the run ends (the fused optimizer's hooks)
    try:
        return _run_loop(opts, job, run_dir, reporter, device, autocast, on_exit)
    finally:
        for undo in on_exit:
            undo()


def _optimizer(opts: TrainingOptions, groups: list[dict], precision: str, processes):
    """The run's optimizer; with ``fused_backward`` one that steps each weight inside the backward pass."""
    if opts.fused_backward:
        return FusedBackward(lambda g: make_optimizer(opts.optimizer, g, lr=0.0, weight_decay=opts.weight_decay,
                                                      warmup_steps=opts.warmup_steps),
                             groups, clip_value=opts.clip_value if opts.clip_grad == "value" else None,
                             loss_scale=FP16_START_SCALE if precision == "fp16" else 1.0, processes=processes)
    return make_optimizer(opts.optimizer, [{"params": g["params"]} for g in groups], lr=0.0,
                          weight_decay=opts.weight_decay, warmup_steps=opts.warmup_steps)


def _resume(store: CheckpointStore, job, params, optimizer, scaler, ema, processes, reporter) -> tuple[int, float]:
    """Everything put back from the newest complete checkpoint: (its step, its learning-rate scale)."""
    ckpt, state = store.load_latest()
    with torch.no_grad():
        for p, v in zip(params, state["params"]):
            if p.shape != v.shape:
                raise RuntimeError(f"cannot resume: saved parameter shape {tuple(v.shape)} differs from {tuple(p.shape)}")
            p.copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    own = state.get("ranks", [state])
    if processes.rank >= len(own):
        raise RuntimeError(f"cannot resume: the run was saved by {len(own)} process(es); launch as many")
    job.load_state_dict(own[processes.rank]["job"])
    set_rng_state(own[processes.rank]["rng"])
    step = int(state["step"])
    reporter.message(f"resumed {job.name} at step {step} from {ckpt.path}")
    return step, float(state["lr_scale"])


def _optimizer_step(opts: TrainingOptions, job, params, optimizer, scaler, guard: NanGuard, autocast, processes,
                    device) -> tuple[float, bool]:
    """One optimizer step: the micro-batches accumulated, gradients averaged over the processes, clipped and
    applied. Returns (its mean loss, whether loss, gradients and weights stayed finite)."""
    fused = opts.fused_backward
    optimizer.zero_grad(set_to_none=True)
    total, finite = 0.0, True
    for micro in range(opts.grad_accum):
        with autocast():
            loss = job.loss()
        if processes.any([not torch.isfinite(loss.detach())], device)[0]:  # one bad batch skips it in all
            return total, False
        scaled = loss.float() / opts.grad_accum
        if fused:
            optimizer.arm(micro == opts.grad_accum - 1)
            scaled = scaled * optimizer.loss_scale
        (scaler.scale(scaled) if scaler else scaled).backward()
        total += float(loss.detach()) / opts.grad_accum
    if fused:  # the step is already applied; this says whether its gradients were finite
        return total, optimizer.finish_step()
    processes.average_gradients(params)
    if scaler:
        scaler.unscale_(optimizer)
    if opts.clip_grad == "value":
        torch.nn.utils.clip_grad_value_(params, opts.clip_value)
    elif opts.clip_grad == "norm":
        torch.nn.utils.clip_grad_norm_(params, opts.clip_value)
    if scaler:
        scaler.step(optimizer)  # skips the step itself on inf/NaN gradients (fp16 overflow)
        scaler.update()
    elif not finite_gradients(params):
        return total, False
    else:
        optimizer.step()
    return total, guard.weights_finite()


def _run_loop(opts: TrainingOptions, job, run_dir, reporter, device, autocast, on_exit: list) -> LoopResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(opts.precision, device)
    processes = distributed.current()  # several under accelerate launch / torchrun: gradients averaged each step
    if not processes.main:
        reporter = Reporter()  # the first process alone reports, writes files and polls the control channel
    groups = job.param_groups()
    params = _params(groups)
    processes.broadcast(params)
    base_scales = [g.get("lr_scale", 1.0) for g in groups]
    optimizer = _optimizer(opts, groups, precision, processes)
    if opts.fused_backward:
        on_exit.append(optimizer.close)
    lr_text, why = effective_lr(opts)
    if why:
        reporter.message(why)
    if (objective := getattr(job, "objective", None)) is not None and (knobs := knob_summary(objective)):
        reporter.message(f"objective ({objective.schedule.prediction_type}): {knobs}")
    if hasattr(job, "bind_optimizer"):  # a job that saves the optimizer state in its own files
        job.bind_optimizer(optimizer)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and not opts.fused_backward else None
    ema = EMA(params, opts.ema_decay, "cpu" if opts.ema_on_cpu else None) if opts.ema_decay else None
    ema_applied = ema.applied if ema is not None else contextlib.nullcontext

    @contextlib.contextmanager
    def averaged():  # what is saved, previewed and validated: the EMA, or a schedule-free optimizer's average
        with evaluating(optimizer, params), ema_applied():
            yield
    autocast = autocast or (lambda: torch.autocast(device.type, dtype=torch.float16 if precision == "fp16"
                                                   else torch.bfloat16, enabled=precision != "fp32"))

    store = CheckpointStore(run_dir, opts.keep_checkpoints, opts.keep_every_minutes, report=reporter.message)
    control = ControlChannel(run_dir)
    control.poll()  # requests left over from an earlier run do not count
    step, lr_scale = 0, 1.0
    if opts.resume:
        step, lr_scale = _resume(store, job, params, optimizer, scaler, ema, processes, reporter)
    log = RunLog(run_dir, resume_from=step if opts.resume else None, report=reporter.message)
    board = TensorBoardLog(run_dir, opts.tensorboard and processes.main, step if opts.resume else None,
                           reporter.message)
    on_exit.append(board.close)

    def write_log() -> None:
        if processes.main:
            log.write()
            board.flush()
    guard = NanGuard(params, optimizer, opts.max_bad_steps, lr_scale)

    def checkpoint(at_step: int, keep: bool = False) -> Path | None:
        """Every process's data order and generators, written by the first (all processes call it together)."""
        ranks = processes.gather({"job": job.state_dict(), "rng": rng_state()})
        if not processes.main:
            return None
        state = {"step": at_step, "lr_scale": guard.lr_scale, "params": [p.detach().cpu() for p in params],
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                 "ema": ema.state_dict() if ema is not None else {}, **ranks[0]}
        if processes.distributed:
            state["ranks"] = ranks
        return store.save(at_step, state, keep=keep)

    def validate(at_step: int) -> None:
        if not processes.main:
            return
        with evaluating(optimizer, params):
            value = job.validation_loss() if hasattr(job, "validation_loss") else None
        if value is not None:
            log.set_validation(at_step, value)
            board.scalars(at_step, val_loss=value)
            reporter.message(f"step {at_step}: validation loss {value:.5f}")

    def preview(at_step: int) -> None:
        if not processes.main:
            return
        with averaged():
            images, paths = job.preview(at_step)
        board.previews(at_step, images)
        reporter.preview(at_step, images, paths)

    def save(at_step: int) -> None:
        path = None
        if processes.main:
            with averaged():
                path = job.save(at_step, final=False)
        if processes.main:  # the log first: a checkpoint never stands without the loss rows up to its step
            write_log()
        checkpoint(at_step)
        if processes.main:
            reporter.message(f"step {at_step}: saved {path}")

    losses: list[float] = []
    interrupted = killed = False
    started = time.monotonic()
    reporter.begin(f"train {job.name}", opts.steps, step)
    try:
        while step < opts.steps:
            if processes.any([reporter.should_stop()], device)[0]:
                interrupted = True
                break
            lr = lr_at(step, opts.lr_schedule, lr_text, opts.steps, opts.warmup_steps,
                       cycles=opts.lr_cycles) * guard.lr_scale
            for g, scale in zip(optimizer.param_groups, base_scales):
                g["lr"] = lr * scale
            total, finite = _optimizer_step(opts, job, params, optimizer, scaler, guard, autocast, processes, device)
            if not finite:
                reporter.message(guard.reject(step + 1))
                if guard.gave_up:
                    raise TrainingDiverged(
                        f"training of {job.name} diverged: {guard.bad_in_row} steps in a row gave non-finite values. "
                        f"Lower the learning rate (now {opts.lr!r}), use fp32 or bf16, or enable gradient clipping. "
                        f"The last good state is saved in {run_dir}.")
                continue
            step += 1
            if ema is not None:
                ema.update()
            if hasattr(job, "after_step"):
                job.after_step(step)
            guard.accept()
            losses.append(total)
            log.append(step, total, lr, time.monotonic() - started)
            board.scalars(step, loss=total, lr=lr)
            reporter.step({"step": step, "loss": total, "lr": lr})
            requests = processes.agree(control.poll() if processes.main else set(), device)
            for unknown in sorted(r for r in requests if r.startswith("unknown:")):
                reporter.message(f"ignored control request {unknown[8:]!r}; use sample, save, backup or stop")
            if (opts.save_every and step % opts.save_every == 0 and step < opts.steps) or "save" in requests:
                save(step)
            if "backup" in requests:
                reporter.message(f"step {step}: backup kept at {checkpoint(step, keep=True)}")
            if (opts.preview_every and step % opts.preview_every == 0) or "sample" in requests:
                preview(step)
            if opts.validation_every and step % opts.validation_every == 0:
                validate(step)
            if "stop" in requests:
                interrupted = True
                reporter.message(f"stopping after step {step} as asked")
                break
    except KeyboardInterrupt:
        interrupted = killed = True
        reporter.message(f"interrupted at step {step}; saving the last state")
    except TrainingDiverged:
        write_log()
        checkpoint(step)
        reporter.end()
        raise
    except CheckpointError as e:
        reporter.message(str(e))
        write_log()
        reporter.end()
        raise
    try:
        final_path = None
        if step > 0 and processes.main:
            with averaged():
                final_path = job.save(step, final=True)
        write_log()  # before the checkpoint: a resume from it finds every row up to its step
        if not (killed and processes.distributed):  # Ctrl+C reaches the processes apart: the last checkpoint stands
            checkpoint(step)
    except CheckpointError as e:
        reporter.message(str(e))
        raise
    finally:
        write_log()
        reporter.end()
    return LoopResult(step=step, final_path=final_path, interrupted=interrupted, losses=losses,
                      bad_steps=guard.bad_total)


def run_on_host(opts: TrainingOptions, job: TrainingJob, run_dir: Path, reporter: Reporter, host) -> LoopResult:
    """:func:`run_loop` on a host: the host's autocast at the run's precision, and its gradient checkpointing on
    for the run when ``opts.gradient_checkpointing`` asks (off again afterwards, however the run ends)."""
    precision = resolve_precision(opts.precision, host.device)
    if opts.gradient_checkpointing:
        host.set_gradient_checkpointing(True)
    try:
        return run_loop(opts, job, run_dir, reporter, host.device, autocast=lambda: host.autocast(precision))
    finally:
        if opts.gradient_checkpointing:
            host.set_gradient_checkpointing(False)
