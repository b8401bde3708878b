"""What the WebUI tabs and the /scal-sdt/v1 API run: training on the WebUI's loaded model, results reloaded."""
from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path
from secrets import compare_digest

import torch

from fastapi import Body, Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from modules import call_queue, devices, paths, shared  # noqa: the WebUI

from ..aesthetic.config import AestheticEmbeddingConfig
from ..aesthetic.make import AestheticResult, make_aesthetic_embedding
from ..audit.config import AuditConfig
from ..audit.report import AuditReport
from ..audit.run import audit_folder, check_out
from ..config import changed_options, describe, from_dict, speak
from ..files import check_confined
from ..dreambooth.config import ConceptOptions, DreamBoothConfig
from ..evaluate.config import EvaluateConfig
from ..jobs import FanOut, JobRegistry
from ..hypernetwork.config import HypernetworkConfig
from ..lora.config import LoraConfig
from ..textual_inversion.config import EmbeddingConfig
from .. import runs
from ..tagging.clean import CleanConfig, clean_folder
from ..tagging.config import TagConfig
from ..tagging.model import POOL as TAGGERS
from ..tagging.run import tag_folder
from ..training import control
from ..training.loop import resolve_precision
from ..training.options import size_list
from ..ui.loss_svg import loss_svg
from ..host.families import family
from .aesthetic import aesthetic_dir, family_name
from .queue_api import add_queue_routes
from ..run_queue.background import BackgroundRunner, each_job_holding, start_on_launch
from ..run_queue.store import QueueFolder
from .adapter import (LOADED_CHECKPOINT, BlipCaptioner, WebUIHost, WebUIReporter, checkpoint_loaded, find_checkpoint,
                      lora_dir, reload_checkpoints, reload_embeddings, reload_hypernetworks, reload_loras)

API_PREFIX = "/scal-sdt/v1"
SOURCE_HELP = ("the checkpoint to fine-tune: the one loaded now, or another of the WebUI's list (loaded for the run; "
               "the one loaded before comes back afterwards)")
RESULT_SUFFIXES = (".safetensors", ".pt", ".bin", ".png", ".webp")


def embeddings_dir() -> str:
    return shared.cmd_opts.embeddings_dir


def hypernetworks_dir() -> str:
    return shared.cmd_opts.hypernetwork_dir


def checkpoints_dir() -> str:
    return getattr(shared.cmd_opts, "ckpt_dir", None) or os.path.join(paths.models_path, "Stable-diffusion")


def webui_folders() -> list[str]:
    """Where a job started through the API may write: the WebUI's data, model and result folders."""
    return [paths.data_path, paths.models_path, embeddings_dir(), hypernetworks_dir(), checkpoints_dir(), lora_dir(),
            getattr(shared.cmd_opts, "data_dir", "") or ""]


def webui_defaults(kind: type = EmbeddingConfig) -> dict:
    """Form and API defaults that come from the WebUI: where its embeddings / hypernetworks / checkpoints live.
    Gradient checkpointing of an embedding's or hypernetwork's run, when nobody chose it, is decided from the run's
    size (:func:`checkpointing_by_size`)."""
    if kind is DreamBoothConfig:  # model: a checkpoint of the WebUI's list, by default the loaded one
        return {"out": checkpoints_dir(), "model": LOADED_CHECKPOINT}
    if kind is LoraConfig:  # the WebUI's Lora folder: <lora:NAME:1> works when the run ends
        return {"out": lora_dir(), "embeddings_out": embeddings_dir()}
    return {"out": hypernetworks_dir() if kind is HypernetworkConfig else embeddings_dir()}


def checkpointing_by_size(run: runs.Run, explicit: frozenset, say) -> runs.Run:
    """An embedding's or hypernetwork's run in the WebUI whose gradient checkpointing neither the user nor a memory
    preset chose: on only where the activations a step keeps outweigh what the WebUI's own trainer holds anyway —
    a gradient for every UNet weight (:meth:`WebUIHost.unet_weight_bytes`). Below that, keeping them costs less
    memory than the WebUI's trainer and saves recomputing the forward pass (tiny SD1 at 64 px: about half the time
    of a step); above it (tiny SD1 at 256 px, a real model at 512) the run checkpoints, as the WebUI's trainers
    always do."""
    cfg, host = run.cfg, run.host
    if (not isinstance(cfg, (EmbeddingConfig, HypernetworkConfig)) or not isinstance(host, WebUIHost)
            or "gradient_checkpointing" in explicit or cfg.preset):
        return run
    side = max([cfg.resolution or host.native_resolution] + (size_list(cfg.resolutions) if cfg.resolutions else []))
    kept = host.step_activation_bytes(cfg.batch_size, (side, side), resolve_precision(cfg.precision, host.device))
    release_memory()  # what the probe's passes took goes back before the run
    held = host.unet_weight_bytes()
    on = kept > held
    say(f"gradient checkpointing {'on' if on else 'off'}: a step at {side} px, batch {cfg.batch_size} keeps about "
        f"{kept / 2**20:.0f} MB of activations, {'more' if on else 'less'} than the {held / 2**20:.0f} MB of UNet "
        f"gradients the WebUI's own trainer holds (tick gradient_checkpointing to choose it yourself)")
    return dataclasses.replace(run, cfg=dataclasses.replace(cfg, gradient_checkpointing=on))


def make_aesthetic(cfg: AestheticEmbeddingConfig, reporter=None) -> AestheticResult:
    """An aesthetic embedding for the loaded model's family, on the WebUI's device, in its data folder."""
    cfg = dataclasses.replace(cfg, out=os.path.join(paths.data_path, cfg.out), device=str(devices.device))
    if shared.sd_model is None:
        raise RuntimeError("no model is loaded in the WebUI: choose a Stable Diffusion checkpoint first")
    return make_aesthetic_embedding(cfg, reporter, family(family_name(shared.sd_model)))


def audit(cfg: AuditConfig, reporter=None) -> AuditReport:
    """A data check (the forms' "Check data", ``POST audit``): its report in the WebUI's data folder."""
    return audit_folder(dataclasses.replace(cfg, out=os.path.join(paths.data_path, cfg.out)), reporter)


def evaluate(cfg, options: dict):
    """The training tab's "Evaluate": the saved steps of the run of ``cfg`` (its log folder as the WebUI puts it)
    drawn by the WebUI's own txt2img on the loaded model, one generation at a time in the WebUI's queue."""
    ecfg = EvaluateConfig(run_dir=effective_config(cfg).log_dir, **{"aesthetic_dir": aesthetic_dir(), **options})
    with call_queue.queue_lock:
        return evaluate_in_webui(ecfg)


def evaluate_in_webui(cfg):
    """``scal-sdt evaluate`` on the WebUI's loaded model (the caller holds the WebUI's queue): only the step under
    test applies (the WebUI's loaded hypernetworks are set aside meanwhile); a DreamBooth run is refused."""
    from ..evaluate.run import evaluate_run

    def refuse(path):
        raise ValueError("a DreamBooth run's steps are whole checkpoints: compare them with scal-sdt evaluate on the "
                         "command line or the standalone page")

    loaded = list(getattr(shared, "loaded_hypernetworks", []))
    shared.loaded_hypernetworks.clear()
    try:
        return evaluate_run(cfg, WebUIHost(), say=print, load_model=refuse)
    finally:
        shared.loaded_hypernetworks[:] = loaded


def keep(cfg, step: int):
    """The tab's "Keep this one": the saved step copied to the result's name, and the WebUI's lists reloaded."""
    from ..evaluate.run import keep_step

    path = keep_step(Path(effective_config(cfg).log_dir), step)
    reload_hypernetworks() if isinstance(cfg, HypernetworkConfig) else reload_checkpoints() if isinstance(
        cfg, DreamBoothConfig) else reload_loras() if isinstance(cfg, LoraConfig) else reload_embeddings()
    return path


def native_resolution() -> int:
    """The loaded model's training size (what a form's resolution 0 means); 512 before a model is loaded."""
    try:
        return WebUIHost().native_resolution
    except RuntimeError:
        return 512


def effective_config(cfg):
    """The run's folders inside the WebUI's data folder unless the user chose others (relative paths too)."""
    what = ("hypernetworks" if isinstance(cfg, HypernetworkConfig) else "dreambooth" if isinstance(cfg, DreamBoothConfig)
            else "lora" if isinstance(cfg, LoraConfig) else "textual_inversion")
    log_dir = cfg.log_dir or os.path.join(what, "scal-sdt", cfg.name)
    out = cfg.out or webui_defaults(type(cfg))["out"]
    cfg = dataclasses.replace(cfg, out=os.path.join(paths.data_path, out), log_dir=os.path.join(paths.data_path, log_dir))
    if isinstance(cfg, DreamBoothConfig):  # the checkpoint, its LoRA and embedding where the WebUI lists them
        defaults = {f: DreamBoothConfig.__dataclass_fields__[f].default for f in ("out", "embeddings_out")}
        cfg = dataclasses.replace(
            cfg, out=checkpoints_dir() if out == defaults["out"] else cfg.out,
            lora_out=cfg.lora_out or (lora_dir() if cfg.extract_lora else ""),
            embeddings_out=embeddings_dir() if cfg.embeddings_out == defaults["embeddings_out"] else cfg.embeddings_out)
    if isinstance(cfg, LoraConfig):  # the LoRA and its pivotal embedding where the WebUI lists them
        defaults = {f: LoraConfig.__dataclass_fields__[f].default for f in ("out", "embeddings_out")}
        cfg = dataclasses.replace(
            cfg, out=lora_dir() if out == defaults["out"] else cfg.out,
            embeddings_out=embeddings_dir() if cfg.embeddings_out == defaults["embeddings_out"] else cfg.embeddings_out)
    if isinstance(cfg, EmbeddingConfig):  # the UNet-parts LoRA goes where the WebUI's Lora extension looks
        default = EmbeddingConfig.__dataclass_fields__["lora_out"].default
        lora_out = lora_dir() if cfg.lora_out in ("", default) else os.path.join(paths.data_path, cfg.lora_out)
        cfg = dataclasses.replace(cfg, lora_out=lora_out)
    return cfg


_active_run: list[str] = []  # the log folder of the training running now (one at a time: the GPU queue)


def steer(word: str) -> None:
    """The tab's "Sample now" / "Save now" / "Backup now" buttons."""
    if _active_run:
        control.request(Path(_active_run[-1]), word)


def run_training(cfg, extra_reporter=None, explicit: frozenset | None = None) -> dict:
    """Train an embedding, a hypernetwork, a LoRA or a DreamBooth checkpoint (by the config's type) on the loaded
    model —
    for DreamBooth on the checkpoint ``cfg.model`` names, loaded for the run (the WebUI's model loaded again
    afterwards); the result is in the WebUI's lists when this returns.
    ``explicit``: the options the user gave (a preset never overrides them); by default those that differ from
    their defaults (the form sends every field)."""
    source = cfg.model if isinstance(cfg, DreamBoothConfig) else ""
    check_runnable(cfg)
    if is_forge():  # nothing to switch: the run trains its own copy of the file, given back afterwards
        try:
            return _run_training(cfg, extra_reporter, explicit, source)
        finally:
            release_memory()
    try:
        with checkpoint_loaded(source):
            return _run_training(cfg, extra_reporter, explicit)
    finally:  # the job's thread had its own heap arena: what the run freed goes back to the system
        release_memory()


def _run_training(cfg, extra_reporter, explicit, source: str = "") -> dict:
    host = training_host(source)
    losses: list[float] = []
    svg = [""]
    steps = [cfg.steps]

    def on_step(info):
        """Progress text with a live loss curve; multi-line, so the WebUI shows it as HTML under its bar."""
        losses.append(info["loss"])
        if len(losses) % 5 == 0 or len(losses) < 5:
            svg[0] = loss_svg(losses[-2000:])
        shared.state.textinfo = f"step {info['step']}/{steps[0]}: loss {info['loss']:.5f}\n<br>{svg[0]}"

    webui_reporter = WebUIReporter(on_step=on_step)
    reporter = FanOut(webui_reporter, extra_reporter) if extra_reporter else webui_reporter
    # presets and the run's model name as everywhere; the WebUI's device flags stay the WebUI's. Forge trains its
    # own copy of the file: nothing of the WebUI's to put back
    if explicit is None:  # a form sends every field: what differs from the defaults it showed (the WebUI's too)
        shown = webui_defaults(type(cfg))
        explicit = frozenset(k for k in changed_options(cfg) if k not in shown or getattr(cfg, k) != shown[k])
    run = runs.prepare(effective_config(cfg), host, explicit, say=reporter.message,
                       host_outlives_run=isinstance(host, WebUIHost))
    run = checkpointing_by_size(run, explicit, reporter.message)
    cfg = run.cfg
    steps[0] = cfg.steps
    _active_run.append(cfg.log_dir)
    hypernetwork = isinstance(cfg, HypernetworkConfig)
    dreambooth = isinstance(cfg, DreamBoothConfig)
    lora = isinstance(cfg, LoraConfig)
    loaded = list(getattr(shared, "loaded_hypernetworks", []))
    try:
        if hypernetwork or dreambooth or lora:  # the WebUI applies its loaded ones inside attention: none but ours
            shared.loaded_hypernetworks.clear()
        result = runs.train(run, reporter)  # a DreamBooth run puts the WebUI's model back as it was loaded
    finally:
        _active_run.remove(cfg.log_dir)
        if hypernetwork or dreambooth or lora:
            shared.loaded_hypernetworks[:] = loaded
        if dreambooth:
            reload_checkpoints()
            if cfg.extract_lora:
                reload_loras()
            if cfg.pivotal_vectors:
                reload_embeddings()
        elif lora:
            reload_loras()
            if cfg.pivotal_vectors:
                reload_embeddings()
        else:
            reload_hypernetworks() if hypernetwork else reload_embeddings()
        if isinstance(cfg, EmbeddingConfig) and cfg.unet_parts:
            reload_loras()
    run_dir = Path(cfg.log_dir)
    previews = sorted((run_dir / "images").glob("*.png"), key=os.path.getmtime)
    state = "interrupted" if result.interrupted else "finished"
    use = (f"Pick it in Settings or write <code>&lt;hypernet:{html.escape(cfg.name)}:1&gt;</code>" if hypernetwork
           else "Pick it in the checkpoint list" if dreambooth
           else f"Write <code>&lt;lora:{html.escape(cfg.name)}:1&gt;</code> in a prompt" if lora
           else f"Write <code>{html.escape(cfg.name)}</code> in a prompt")
    what = run.trainer.what.capitalize()
    text = (f"<p>{what} <b>{html.escape(cfg.name)}</b> {state} at step "
            f"{result.step}: {html.escape(str(result.final_path))}. {use}.</p>"
            + "".join(f"<p>{html.escape(speak(m, 'page'))}</p>" for m in webui_reporter.lines[-8:]))
    return {"text": text, "plot": str(run_dir / "loss.png") if (run_dir / "loss.png").exists() else None,
            "preview": str(previews[-1]) if previews else None, "path": str(result.final_path),
            "step": result.step, "interrupted": result.interrupted, "run_dir": str(run_dir)}


def check_runnable(cfg) -> None:
    """A ValueError saying why this WebUI cannot run ``cfg``: a DreamBooth source not in its checkpoint list, or
    bf16 weights on a CPU WebUI; a LoRA of the text encoders on the WebUI's own model."""
    if isinstance(cfg, LoraConfig) and cfg.train_text_encoder and not is_forge():
        raise ValueError("train_text_encoder: a LoRA of the text encoders is trained on the command line (scal-sdt "
                         "train-lora) for now; inside the WebUI the LoRA learns the UNet")
    if not isinstance(cfg, DreamBoothConfig):
        return
    find_checkpoint(cfg.model)
    if cfg.master_weights == "bf16" and devices.device.type == "cpu" and not is_forge():
        raise ValueError("master_weights bf16 needs a GPU inside the WebUI (its UNet's GroupNorm computes in fp32, "
                         "which bf16 weights on the CPU cannot do); use fp32 weights here, or scal-sdt dreambooth on "
                         "the command line")


def release_memory() -> None:
    """Give the memory of a training's own model copy back (cycles collected, the CUDA cache and, on Linux, free heap
    returned to the system), so that one run after another does not pile up copies next to the WebUI's model."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def is_forge() -> bool:
    """Forge (its ``modules_forge`` package) with a model that gives no gradients: its model keeps the parts in
    ``forge_objects`` and has no ``cond_stage_model``; before its first generation ``shared.sd_model`` is a
    placeholder (``FakeInitialModel``) with no checkpoint at all. reForge has ``modules_forge`` too, but its model is
    an ldm one with the WebUI's own text encoders (``cond_stage_model``) around its backend's UNet and VAE: that one
    is trained in place, as in A1111."""
    import importlib.util

    model = shared.sd_model
    if getattr(model, "cond_stage_model", None) is not None:
        return False
    return importlib.util.find_spec("modules_forge") is not None or hasattr(model, "forge_objects")


def training_host(source: str = ""):
    """The WebUI's loaded model; on Forge a trainable copy of the selected checkpoint file, or of ``source`` (a
    title of the WebUI's checkpoint list), and say so."""
    if not is_forge():
        return WebUIHost()
    from modules import sd_models

    from ..host.standalone import load_host

    loaded = getattr(shared.sd_model, "sd_checkpoint_info", None)  # none before Forge's first generation
    path = (find_checkpoint(source) or loaded or sd_models.select_checkpoint()).filename
    print(f"[SCAL-SDT] Forge cannot give gradients through its own model: training on a trainable copy of {path}")
    return load_host(path, device=str(devices.device))


def interrupt() -> None:
    shared.state.interrupt()


def train_queued(cfg, explicit: set, reporter):
    """One job of the queue: trained as the Train tab trains, on the loaded model (the caller holds the WebUI's GPU
    lock for this job alone, so generations go on between the jobs of a night)."""
    from types import SimpleNamespace

    shared.state.begin(job="scal-sdt-queue")
    try:
        out = run_training(cfg, reporter, explicit=frozenset(explicit))
    finally:
        shared.state.end()
    return SimpleNamespace(interrupted=out["interrupted"], step=out["step"], final_path=out["path"])


_queue_runner: list[BackgroundRunner] = []
AUTOSTART_OPTION = "scal_sdt_queue_autostart"  # Settings → SCAL-SDT: run the queue when the WebUI starts


def queue_runner() -> BackgroundRunner:
    """The WebUI's training queue (its data folder's scal-sdt-queue/), shared by the Queue tab and the API; each
    job under the WebUI's GPU queue lock."""
    if not _queue_runner:
        _queue_runner.append(BackgroundRunner(QueueFolder(os.path.join(paths.data_path, "scal-sdt-queue")),
                                              each_job_holding(call_queue.queue_lock, train_queued)))
    return _queue_runner[0]


def start_queue_with_webui() -> bool:
    """At start-up (on_app_started): run the waiting jobs when Settings → SCAL-SDT asks for it."""
    return start_on_launch(queue_runner(), bool(getattr(shared.opts, AUTOSTART_OPTION, False)))


def enqueue(cfg) -> str:
    """The Train tabs' "Add to queue": the form's run (the options changed in it) queued for the loaded model."""
    check_runnable(cfg)
    job = queue_runner().queue.add_config(cfg)
    return f"queued {job.id} ({job.command} {job.name}): run it from the SCAL-SDT Queue tab"


def check_queueable(cfg) -> None:
    """What the API refuses to queue: folders outside the WebUI's."""
    check_confined(effective_config(cfg), webui_folders())


# -- HTTP API ---------------------------------------------------------------------------------------------------
def _auth_dependency():
    """The WebUI's --api-auth, as its own API applies it (routes added by extensions don't get it for free)."""
    if not shared.cmd_opts.api_auth:
        return []
    credentials = dict(item.split(":", 1) for item in shared.cmd_opts.api_auth.split(","))

    def check(creds: HTTPBasicCredentials = Depends(HTTPBasic())):
        expected = credentials.get(creds.username)
        if expected is not None and compare_digest(creds.password, expected):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]


def add_api_routes(app: FastAPI) -> JobRegistry:
    registry = JobRegistry(lock=call_queue.queue_lock, store=os.path.join(paths.data_path, "scal-sdt-jobs.json"))
    deps = _auth_dependency()

    def starter(kind: type, name: str):
        def start(body: dict = Body(...)):
            try:
                cfg = from_dict(kind, {**webui_defaults(kind), **body})
            except (TypeError, ValueError) as e:
                raise HTTPException(status_code=422, detail=speak(str(e), "api")) from None
            try:
                check_confined(effective_config(cfg), webui_folders())
            except ValueError as e:
                raise HTTPException(status_code=422, detail=str(e)) from None
            concepts = issubclass(kind, ConceptOptions)  # DreamBooth, LoRA
            folder = (cfg.instance_data or cfg.data) if concepts else cfg.data
            if not (concepts and cfg.concepts) and not os.path.isdir(folder):
                field = "instance_data" if concepts else "data"
                raise HTTPException(status_code=422, detail=f"{field}: dataset folder does not exist: {folder}")
            try:
                check_runnable(cfg)
            except ValueError as e:
                raise HTTPException(status_code=422, detail=speak(str(e), "api")) from None

            def work(reporter):
                shared.state.begin(job=f"scal-sdt-{name}")
                try:
                    return run_training(cfg, reporter, explicit=frozenset(body))
                finally:
                    shared.state.end()

            return registry.start(name, work, request=body).to_dict()
        return start

    def get_job(job_id: str):
        job = registry.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return job.to_dict("api")

    def interrupt_job(job_id: str):
        if not registry.interrupt(job_id):
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return {"interrupting": job_id}

    def list_jobs():
        return [job.to_dict("api") for job in registry.jobs.values()]

    def list_embeddings():
        root = Path(embeddings_dir())
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in RESULT_SUFFIXES
                       and not p.name.lower().endswith(".preview.png"))
        return {"dir": str(root), "files": [str(p.relative_to(root)) for p in files]}

    def list_hypernetworks():
        reload_hypernetworks()  # files dropped into the folder become usable by name, as after a refresh
        root = Path(hypernetworks_dir())
        return {"dir": str(root), "files": [str(p.relative_to(root)) for p in sorted(root.rglob("*.pt"))]}

    def folder_job(kind: type, body: dict, folder: str = "dir"):
        """A tagging, cleaning or aesthetic-embedding config from an API body; bad input is a 422 with the reason."""
        try:
            cfg = from_dict(kind, body)
        except (TypeError, ValueError) as e:
            raise HTTPException(status_code=422, detail=speak(str(e), "api")) from None
        if not os.path.isdir(getattr(cfg, folder)):
            raise HTTPException(status_code=422, detail=f"{folder}: folder does not exist: {getattr(cfg, folder)}")
        written = dataclasses.replace(cfg, out=os.path.join(paths.data_path, cfg.out)) if getattr(cfg, "out", "") else cfg
        try:
            check_confined(written, webui_folders())
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        return cfg

    def start_tagging(body: dict = Body(...)):
        cfg = folder_job(TagConfig, body)
        # ONNX models, not the WebUI's: no need to wait for the GPU queue
        if cfg.blip:  # BLIP runs on the WebUI's device: wait for its queue like any generation
            return registry.start("tag", lambda reporter: tag_folder(cfg, reporter, captioner=BlipCaptioner()).to_dict()
                                  ).to_dict()
        return registry.start("tag", lambda reporter: tag_folder(cfg, reporter).to_dict(), locked=False).to_dict()

    def start_cleaning(body: dict = Body(...)):
        cfg = folder_job(CleanConfig, body)
        return registry.start("clean", lambda reporter: clean_folder(cfg, reporter).to_dict(), locked=False).to_dict()

    def start_aesthetic(body: dict = Body(...)):
        cfg = folder_job(AestheticEmbeddingConfig, body, folder="images")

        def work(reporter):
            result = make_aesthetic(cfg, reporter)
            return {"paths": [str(p) for p in result.paths], "images": result.images, "skipped": result.skipped}

        return registry.start("aesthetic-embedding", work).to_dict()

    def start_audit(body: dict = Body(...)):
        cfg = folder_job(AuditConfig, body)
        try:
            check_out(dataclasses.replace(cfg, out=os.path.join(paths.data_path, cfg.out)))
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        return registry.start("audit", lambda reporter: audit(cfg, reporter).to_dict(), locked=False).to_dict()

    def start_evaluate(body: dict = Body(...)):
        from ..training.run_setup import read_run_record

        try:
            cfg = from_dict(EvaluateConfig, {"aesthetic_dir": aesthetic_dir(), **body})
            cfg = dataclasses.replace(cfg, run_dir=os.path.join(paths.data_path, cfg.run_dir),
                                      out=os.path.join(paths.data_path, cfg.out) if cfg.out else "")
            check_confined(cfg, webui_folders())
            if read_run_record(Path(cfg.run_dir))["method"] == "dreambooth":
                raise ValueError("run_dir: a DreamBooth run's steps are whole checkpoints: compare them with scal-sdt "
                                 "evaluate on the command line or the standalone page")
        except (TypeError, ValueError, OSError) as e:
            raise HTTPException(status_code=422, detail=speak(str(e), "api")) from None

        def work(reporter):
            result = evaluate_in_webui(cfg)
            return {"suggested": result.suggested, "reason": result.reason, "rows": result.rows,
                    "files": {k: str(v) for k, v in result.files.items()},
                    "kept": str(result.kept) if result.kept else None}

        return registry.start("evaluate", work, request=body).to_dict()

    def unload_taggers():
        return {"unloaded": TAGGERS.unload()}

    def options():
        return {"train-embedding": describe(EmbeddingConfig), "train-hypernetwork": describe(HypernetworkConfig),
                "tag": describe(TagConfig), "clean": describe(CleanConfig), "audit": describe(AuditConfig),
                "evaluate": describe(EvaluateConfig),
                "make-aesthetic-embedding": describe(AestheticEmbeddingConfig),
                "dreambooth": describe(DreamBoothConfig), "train-lora": describe(LoraConfig)}

    app.add_api_route(f"{API_PREFIX}/train/embedding", starter(EmbeddingConfig, "train-embedding"), methods=["POST"],
                      dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/train/hypernetwork", starter(HypernetworkConfig, "train-hypernetwork"),
                      methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/train/dreambooth", starter(DreamBoothConfig, "train-dreambooth"),
                      methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/train/lora", starter(LoraConfig, "train-lora"), methods=["POST"],
                      dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/tag", start_tagging, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/clean", start_cleaning, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/audit", start_audit, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/evaluate", start_evaluate, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/aesthetic-embedding", start_aesthetic, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/tag/unload", unload_taggers, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/hypernetworks", list_hypernetworks, methods=["GET"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/jobs", list_jobs, methods=["GET"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/jobs/{{job_id}}", get_job, methods=["GET"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/jobs/{{job_id}}/interrupt", interrupt_job, methods=["POST"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/embeddings", list_embeddings, methods=["GET"], dependencies=deps)
    app.add_api_route(f"{API_PREFIX}/options", options, methods=["GET"], dependencies=deps)
    add_queue_routes(app, API_PREFIX, queue_runner(), deps, check=check_queueable)
    return registry
