"""``scal-sdt``: one sub-command per job, each generated from that job's config dataclass."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .config import add_arguments, flag_name, speak


@dataclass
class Command:
    name: str
    help: str
    config: type
    run: Callable


def _say(text: str) -> None:
    """Printed by the first process only when several train together."""
    from .training import distributed

    if distributed.current().main:
        print(text)


def _reporter():
    from .training import distributed
    from .training.report import ConsoleReporter

    return ConsoleReporter(quiet=not distributed.current().main)


def _report_run(cfg, result) -> int:
    from .training.run_setup import run_dir_for

    run_dir = run_dir_for(cfg)
    state = "interrupted" if result.interrupted else "finished"
    _say(f"{state} at step {result.step}: {result.final_path}")
    _say(f"loss log {run_dir / 'loss.csv'}, plot {run_dir / 'loss.png'}, previews {run_dir / 'images'}")
    return 0


def _train(cfg, explicit: set[str]) -> int:
    """Any training command: runs.py sets the run up (presets, this process's device and seed, the model) and picks
    the config's trainer."""
    from . import runs

    run = runs.prepare(cfg, explicit=explicit, say=_say)
    return _report_run(run.cfg, runs.train(run, _reporter()))


def _train_hypernetwork(cfg, explicit: set[str]) -> int:
    if not cfg.find_lr:
        return _train(cfg, explicit)
    from . import runs
    from .hypernetwork.trainer import find_learning_rate

    run = runs.prepare(cfg, explicit=explicit, say=_say)
    result = find_learning_rate(run.cfg, run.host)
    print(f"proposed learning rate: {result.proposal:.2g} (train with --lr {result.proposal:.2g})")
    return 0


def _lora_tool(cfg, explicit: set[str]) -> int:
    from .lora import tools

    result = getattr(tools, cfg.action)(cfg, report=lambda text: print(text, file=sys.stderr))
    print(result[0] if isinstance(result, tuple) else result)
    return 0


def _create_embedding(cfg, explicit: set[str]) -> int:
    from .host.standalone import load_host
    from .textual_inversion.create import create_embedding

    host = load_host(cfg.model, cfg.device)
    path = create_embedding(host, cfg.name, cfg.vectors, cfg.init_text, Path(cfg.out), cfg.overwrite, cfg.format)
    print(f"created {path}")
    return 0


def _ui(cfg, explicit: set[str]) -> int:
    try:
        from .ui.standalone import serve
    except ImportError as e:
        raise RuntimeError(f"the page needs gradio: pip install 'scal-sdt[ui]' ({e})") from None
    serve(cfg)
    return 0


def _generate(cfg, explicit: set[str]) -> int:
    from .generate.sample import generate
    from .host.standalone import load_host

    if cfg.embeddings and not Path(cfg.embeddings).is_dir():
        raise FileNotFoundError(f"embeddings folder does not exist: {cfg.embeddings}")
    if cfg.lora and not Path(cfg.lora).is_file():
        raise FileNotFoundError(f"LoRA file does not exist: {cfg.lora}")
    host = load_host(cfg.model, cfg.device, cfg.memory_mode)
    for path in generate(cfg, host, report=lambda text: print(text, file=sys.stderr)):
        print(path)
    return 0


def _control(cfg, explicit: set[str]) -> int:
    from .training.control import write_request

    path = write_request(Path(cfg.run_dir), cfg.request)
    print(f"asked the run in {cfg.run_dir} to {cfg.request} after its current step ({path})")
    return 0


def _save_checkpoint(cfg, explicit: set[str]) -> int:
    import torch

    from .host.checkpoint import save_checkpoint
    from .host.standalone import load_components

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(load_components(cfg.model), out, dtype=torch.float16 if cfg.fp16 else None)
    print(f"wrote {path} and {path.with_suffix('.yaml')}")
    return 0


def _tag(cfg, explicit: set[str]) -> int:
    import signal

    from .tagging.run import tag_folder
    from .training.report import ConsoleReporter

    class StopOnCtrlC(ConsoleReporter):
        """The first Ctrl+C ends the run after the current batch (captions so far are written); a second one
        stops at once."""
        stop = False

        def should_stop(self):
            return self.stop

    reporter = StopOnCtrlC()

    def on_sigint(*_):
        if reporter.stop:
            raise KeyboardInterrupt
        reporter.stop = True
        reporter.message("stopping after this batch (Ctrl+C again to stop now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        report = tag_folder(cfg, reporter)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(report.summary())
    top = ", ".join(f"{tag} ({n})" for tag, n in report.frequency.most_common(20))
    if top:
        print(f"most frequent tags: {top}")
    return 130 if report.interrupted else 0


def _clean(cfg, explicit: set[str]) -> int:
    from .tagging.clean import clean_folder
    from .training.report import ConsoleReporter

    report = clean_folder(cfg, ConsoleReporter())
    print(report.summary())
    return 0


def _audit(cfg, explicit: set[str]) -> int:
    from .audit.run import audit_folder

    report = audit_folder(cfg)
    print(report.summary())
    return 0


def _evaluate(cfg, explicit: set[str]) -> int:
    from .evaluate.run import evaluate_run, keep_step

    if cfg.keep.isdigit():  # a step chosen already: copied, nothing drawn
        print(f"kept step {cfg.keep} as {keep_step(Path(cfg.run_dir), int(cfg.keep))}")
        return 0
    result = evaluate_run(cfg, say=lambda text: print(text, file=sys.stderr))
    print(result.summary())
    return 0


def _make_aesthetic_embedding(cfg, explicit: set[str]) -> int:
    from .aesthetic.make import make_aesthetic_embedding
    from .training.report import ConsoleReporter

    result = make_aesthetic_embedding(cfg, ConsoleReporter())
    print(f"wrote {', '.join(str(p) for p in result.paths)} from {result.images} images"
          + (f"; skipped {len(result.skipped)} unreadable" if result.skipped else ""))
    return 0


def _make_toy_world(cfg, explicit: set[str]) -> int:
    from .toy_world.build import make_toy_world

    manifest = make_toy_world(cfg)
    if cfg.check:
        differ = [name for name, same in manifest["identical"].items() if not same]
        print("identical to the shipped files" if not differ else f"differ from the shipped files: {', '.join(differ)} "
              f"(shipped with torch {manifest['shipped_torch']}, rebuilt with {manifest['torch']}; bit-for-bit "
              f"needs the same torch and --threads)")
        return 1 if differ else 0
    print(f"wrote {cfg.out}/manifest.json")
    return 0


def _inspect(cfg, explicit: set[str]) -> int:
    import json

    from .library.identify import inspect_file, summary

    for path in cfg.files:
        info = inspect_file(path)
        print(json.dumps(info, sort_keys=True) if cfg.json else summary(info))
    return 0


def _library(cfg, explicit: set[str]) -> int:
    import json

    from .library.catalogue import scan, select
    from .library.identify import summary

    host = None
    if cfg.model:
        from .host.standalone import load_host

        host = load_host(cfg.model, cfg.device)
    items = select(scan(cfg.folders, host), cfg.search, cfg.kind, cfg.fits_only)
    if cfg.previews:
        from .library.previews import PREVIEWED, previews, standalone_checkpoint

        settings = cfg.preview_settings()
        for item in items:
            if item.kind in PREVIEWED and item.fit is not False and (item.kind != "checkpoint"
                                                                       or cfg.checkpoint_previews):
                _, rendered = previews(item, host, settings, cfg.cache,
                                       lambda path: standalone_checkpoint(path, cfg.device))
                print(f"{item.name}: {'rendered' if rendered else 'from the cache'}", file=sys.stderr)
    for item in items:
        if cfg.json:
            print(json.dumps(item.row(), sort_keys=True, default=str))
            continue
        fit = {True: "fits", False: f"MISMATCH: {item.why}", None: item.why}[item.fit]
        print(f"{item.name} — {summary(item.info)}" + (f"\n    {fit}" if fit else "")
              + "".join(f"\n    {label}: {path}" for label, path in item.previews.items()))
    print(f"{len(items)} item(s)", file=sys.stderr)
    return 0


def _choose(cfg, explicit: set[str]) -> int:
    import json

    from .library.chooser import choose

    choice = choose(cfg.goal, cfg.images, cfg.vram_gb, cfg.family)
    print(json.dumps(choice.as_dict(), sort_keys=True) if cfg.json else choice.text())
    return 0


def _queue(cfg, explicit: set[str]) -> int:
    from .run_queue import runner
    from .run_queue.store import QueueFolder
    from .run_queue.view import job_lines

    queue = QueueFolder(cfg.queue)
    if cfg.action == "add":
        job = queue.add_file(cfg.job)
        place = sum(1 for j in queue.jobs() if j.state in runner.WAITING)
        print(f"queued {job.id}: {job.command} {job.name} (place {place} in {queue.root})")
    elif cfg.action == "list":
        print("\n".join(job_lines(queue)) or f"no jobs in {queue.root}")
        if queue.paused:
            print("(paused: scal-sdt queue resume)")
    elif cfg.action == "cancel":
        job = queue.cancel(cfg.job)
        print(f"cancelled {job.id}" + (" (it stops after its current step)" if "running" in job.message else ""))
    elif cfg.action == "move":
        job = queue.move(cfg.job, cfg.to)
        print(f"moved {job.id} to place {cfg.to}")
    elif cfg.action == "remove":
        queue.remove(cfg.job)
        print(f"removed {cfg.job}")
    elif cfg.action == "pause" and cfg.job:
        job = queue.pause_job(cfg.job)
        print(f"paused {job.id}: " + ("it stops after its current step and continues from its last checkpoint "
                                      "once resumed" if "running" in job.message else "the queue passes it over "
                                                                                       "until it is resumed"))
    elif cfg.action == "pause":
        queue.pause()
        print(f"paused {queue.root}: a running job finishes, no next one starts")
    elif cfg.action == "resume" and cfg.job:
        print(f"resumed {queue.resume_job(cfg.job).id}: it waits in its place again")
    elif cfg.action == "resume":
        queue.resume()
        print(f"resumed {queue.root}")
    else:  # run
        from .training.control import install_signal_handlers

        install_signal_handlers()
        ended = runner.run_queue(queue, runner.train_here, lambda job: _reporter(), say=print, watch=cfg.watch)
        failed = [j for j in ended if j.state == "failed"]
        print(f"ran {len(ended)} job(s)" + (f", {len(failed)} failed: {', '.join(j.id for j in failed)}"
                                            if failed else ""))
        return 1 if failed else 0
    return 0


def _import_config(cfg, explicit: set[str]) -> int:
    from .importers.convert import import_file

    imported, out = import_file(cfg)
    print("\n".join(imported.report.lines()))
    print(f"wrote {out}: run it with scal-sdt {imported.command} --config {out}, or queue it with scal-sdt queue add "
          f"{out}")
    if imported.missing:
        print(f"before it runs, add to {out}: {imported.missing}")
    return 0


def commands() -> list[Command]:
    from .textual_inversion.config import CreateEmbeddingConfig, EmbeddingConfig
    from .generate.config import GenerateConfig
    from .hypernetwork.config import HypernetworkConfig
    from .training.control import ControlConfig
    from .checkpoint_config import SaveCheckpointConfig
    from .toy_world.build import ToyWorldConfig
    from .tagging.config import TagConfig
    from .tagging.clean import CleanConfig
    from .audit.config import AuditConfig
    from .evaluate.config import EvaluateConfig
    from .aesthetic.config import AestheticEmbeddingConfig
    from .dreambooth.config import DreamBoothConfig
    from .lora.config import LoraConfig
    from .lora.tools import LoraToolConfig
    from .ui_config import UiConfig
    from .library.config import ChooseConfig, InspectConfig, LibraryConfig
    from .run_queue.config import QueueConfig
    from .importers.convert import ImportConfig

    return [
        Command("ui", "serve the training page on 127.0.0.1 without the WebUI", UiConfig, _ui),
        Command("train-embedding", "train a Textual Inversion embedding", EmbeddingConfig, _train),
        Command("train-hypernetwork", "train a hypernetwork (the WebUI's .pt format)", HypernetworkConfig,
                _train_hypernetwork),
        Command("dreambooth", "fine-tune a checkpoint on a concept (DreamBooth, prior preservation): a new "
                "single-file checkpoint", DreamBoothConfig, _train),
        Command("train-lora", "train a LoRA / LoCon / LoHa / LoKr / DoRA of a concept or style (kohya-format "
                ".safetensors, <lora:NAME:1>)", LoraConfig, _train),
        Command("lora", "LoRA tools: merge (into a checkpoint, or several into one LoRA, with weights), resize (SVD to a "
                "lower rank, kept energy reported), extract (the LoRA between two checkpoints of a family)",
                LoraToolConfig, _lora_tool),
        Command("tag", "tag every image of a folder with ONNX taggers: a caption file beside each image", TagConfig,
                _tag),
        Command("clean", "clean a dataset folder: face-centred crops, text and watermark flags, duplicates",
                CleanConfig, _clean),
        Command("audit", "check a data set before training: duplicates, corrupt and tiny images, aspect buckets, long "
                "or missing captions, tags, the trigger word, suggested repeats and steps (changes no file)",
                AuditConfig, _audit),
        Command("evaluate", "compare a run's saved steps: a labelled grid of steps x strengths x prompts (same "
                "seeds), validation loss, fidelity and leakage per step, a suggested step; --keep copies one to the "
                "result's name", EvaluateConfig, _evaluate),
        Command("make-aesthetic-embedding", "the mean CLIP image embedding of a folder, for aesthetic gradients",
                AestheticEmbeddingConfig, _make_aesthetic_embedding),
        Command("create-embedding", "create an embedding file from an init text", CreateEmbeddingConfig, _create_embedding),
        Command("generate", "sample PNG images from a model; embeddings in --embeddings work by name in the prompt",
                GenerateConfig, _generate),
        Command("save-checkpoint", "write any model as an original-layout .safetensors with the WebUI's yaml",
                SaveCheckpointConfig, _save_checkpoint),
        Command("make-toy-world", "train the toy world's CLIP, VAE, UNet, judge and tagger from a seed (minutes on a CPU)",
                ToyWorldConfig, _make_toy_world),
        Command("inspect", "what each model file is (embedding, hypernetwork, LoRA/LyCORIS, checkpoint, aesthetic "
                "embedding), for which family, whether the WebUI's safe.py loads it, its training metadata",
                InspectConfig, _inspect),
        Command("library", "every embedding, hypernetwork, LoRA/LyCORIS, aesthetic embedding and checkpoint in the "
                "folders: kind, fit to --model with the reason, details, cached A/B previews", LibraryConfig, _library),
        Command("choose", "which method to train (the guide's \"how to choose\"): method, presets, expected memory and "
                "time, and why, from your goal, number of images, card memory and model family", ChooseConfig, _choose),
        Command("control", "steer a running training: sample, save, backup or stop after the current step",
                ControlConfig, _control),
        Command("queue", "a training queue in a folder, run one job after another (a job cut off by a crash "
                "continues from its last checkpoint): add, list, run, cancel, move, remove, pause, resume",
                QueueConfig, _queue),
        Command("import-config", "read a kohya_ss GUI .json, an sd-scripts .toml (with its dataset .toml) or a "
                "OneTrainer .json and write our config file, with a report of each option: mapped, approximated "
                "(how) or not supported", ImportConfig, _import_config),
    ]


def given_options(cls: type, argv: list[str], args: argparse.Namespace | None = None) -> set[str]:
    """The fields the user set on the command line (argparse fills in the rest): a preset never overrides them.
    With ``args`` (the parsed line), positional fields given there count too."""
    given = set()
    for f in dataclasses.fields(cls):
        flag = flag_name(f)
        if any(a == flag or a.startswith(flag + "=") or a == "--no-" + flag[2:] for a in argv):
            given.add(f.name)
        elif f.metadata.get("positional") and args is not None and getattr(args, f.name, None) is not None:
            default = f.default if f.default is not dataclasses.MISSING else None
            if getattr(args, f.name) != default:
                given.add(f.name)
    return given


def options_from(cmd: Command, args: argparse.Namespace, argv: list[str]):
    """The command's config from its flags and ``--config FILE`` (the flags given win), and the options the user
    set (in either: no preset overrides them)."""
    cls = cmd.config
    given = given_options(cls, argv, args)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in given}
    from_file: dict = {}
    source = None
    if args.config:
        from .config_files import options_for, read_file

        source = read_file(args.config)
        from_file = {k: v for k, v in options_for(cls, source, cmd.name).items() if k not in given}
    values.update(from_file)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            where = f" or in {args.config}" if args.config else " (or in a --config file)"
            raise ValueError(f"{f.name.upper() if f.metadata.get('positional') else flag_name(f)} is required"
                             f"{where}")
        values[f.name] = getattr(args, f.name)
    try:
        cfg = cls(**values)
    except ValueError as e:
        from .config_files import locate

        raise locate(e, source, set(from_file)) from None
    return cfg, given | set(from_file)


def _save_config(cmd: Command, cfg, explicit: set[str], path: str) -> int:
    """``--save-config``: the options resolved (a training's presets applied for its model's family) and written."""
    from .config_files import write_config

    try:
        from . import runs

        runs.trainer_for(cfg)
    except (ImportError, ValueError):
        resolved = cfg
    else:
        resolved = runs.resolve_offline(cfg, explicit, say=lambda text: print(text, file=sys.stderr))
    print(f"wrote {write_config(path, resolved, cmd.name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scal-sdt", description="Dataset tagging and personalisation training for "
                                                                  "Stable Diffusion (WebUI extension and command line).")
    parser.add_argument("--version", action="version", version=f"scal-sdt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help,
                           formatter_class=argparse.HelpFormatter)
        add_arguments(p, cmd.config, defer_required=True)
        files = p.add_argument_group("config files")
        files.add_argument("--config", metavar="FILE", help="read the options from a .toml or .json file (keys as "
                           "the options' names: lr, batch_size); options given on the command line win")
        files.add_argument("--save-config", metavar="FILE", help="write the resolved options (presets applied) "
                           "to a .toml or .json file and stop")
        p.set_defaults(_command=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: Command = args._command
    try:
        cfg, explicit = options_from(cmd, args, sys.argv[1:] if argv is None else argv)
        if args.save_config:
            return _save_config(cmd, cfg, explicit, args.save_config)
        return cmd.run(cfg, explicit)
    except (ValueError, OSError, RuntimeError) as e:  # bad input: one clear line, nothing lost
        print(f"scal-sdt {cmd.name}: error: {speak(str(e), 'cli', cmd.config)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - an unforeseen failure: still one line here, the traceback in a log
        log = _traceback_log(cmd.name)
        print(f"scal-sdt {cmd.name}: error: {type(e).__name__}: {e} (details in {log})", file=sys.stderr)
        return 1


def _traceback_log(command: str) -> Path:
    """Write the current exception's traceback to a log file and return its path."""
    import tempfile
    import time
    import traceback

    folder = Path(tempfile.gettempdir()) / "scal-sdt-errors"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}.log"
    path.write_text(f"scal-sdt {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return path


if __name__ == "__main__":
    sys.exit(main())
