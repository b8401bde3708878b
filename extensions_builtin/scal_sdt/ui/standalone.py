"""`scal-sdt ui`: the same tabs as in the WebUI, served without it, on a checkpoint file or a built-in model."""
from __future__ import annotations

import dataclasses
import html
import inspect
import threading
import time
import typing
from pathlib import Path

import gradio as gr

from ..generate.config import GenerateConfig
from ..generate.sample import generate
from ..ui_config import UiConfig
from ..jobs import Job, JobReporter
from ..hypernetwork.config import HypernetworkConfig
from ..textual_inversion.config import EmbeddingConfig
from .. import runs
from ..training import control
from ..training.run_setup import run_dir_for
from .training_tab import DREAMBOOTH, EMBEDDING, HYPERNETWORK, LORA, training_tab
from ..dreambooth.config import DreamBoothConfig
from ..lora.config import LoraConfig
from .generate_tab import generate_tab
from .tagger_tab import tagger_tab
from .aesthetic_tab import aesthetic_tab
from .library_tab import LibraryView, library_tab, use_on_page
from .chooser_tab import chooser_tab, family_hint
from ..aesthetic.make import make_aesthetic_embedding
from ..tagging.runner import TaggingRunner
from .form import error_html, say
from .loss_svg import loss_svg
from .queue_tab import queue_tab
from ..run_queue.background import BackgroundRunner
from ..run_queue.store import QueueFolder


# the Tagger's "demo pictures" button writes here (relative to where the page was started)
TAGGER_DEMO_FOLDER = "scal-sdt-demo/pictures"
# previews draw the concept large on white, where a newcomer sees the colour (the captions vary: small shapes on brown
# backgrounds would preview as olive blobs)
DEMO_PREVIEW_PROMPT = "a large [name] star on a white background"
#: the embedding tab's settings for the demo on the toy model (about a minute on two idle CPU cores, README)
TOY_DEMO = {"init_text": "red", "steps": 400, "lr": "0.02", "batch_size": 8, "preview_every": 100,
            "save_every": 200, "preview_prompt": DEMO_PREVIEW_PROMPT}


@dataclasses.dataclass
class PageJob:
    """One training started on this page: its config, its live state (``job``), the result or the error."""

    cfg: typing.Any
    job: Job
    reporter: JobReporter
    what: str  # "embedding", "hypernetwork" or "checkpoint"
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: typing.Any = None
    error: Exception | None = None


class StandaloneTrainer:
    """Runs one training at a time on a lazily loaded model; streams progress to the page. Every training of this
    page session is kept in ``jobs``: a page opened (or reloaded) while one runs attaches to it (:meth:`attach`)."""

    def __init__(self, ui: UiConfig):
        self.ui = ui
        self._host = None
        self._reporter: JobReporter | None = None
        self._run_dir: Path | None = None
        self._lock = threading.Lock()
        self.jobs: list[PageJob] = []
        self.library = LibraryView(self.library_folders, self.library_host)
        self.queue = BackgroundRunner(QueueFolder(ui.queue), self.train_queued)

    def train_queued(self, cfg, explicit: set, reporter):
        """One job of the queue, on the page's model, once no training of the page's own runs (and none starts
        while it trains)."""
        with self._lock:
            cfg = dataclasses.replace(cfg, model=self.ui.model, device=self.ui.device, memory_mode=self.ui.memory_mode)
            self._run_dir = run_dir_for(cfg)  # "Sample now" and the others steer it too
            run = runs.prepare(cfg, self.host(), explicit=set(explicit) | {"model", "device", "memory_mode"},
                               say=reporter.message)
            return runs.train(run, reporter)

    def enqueue(self, cfg) -> str:
        job = self.queue.queue.add_config(cfg)
        return f"queued {job.id} ({job.command} {job.name}) in {self.queue.queue.root}: run it from the Queue tab"

    def host(self):
        if self._host is None:
            from ..host.standalone import load_host

            self._host = load_host(self.ui.model, self.ui.device, self.ui.memory_mode)
        return self._host

    def run(self, cfg: EmbeddingConfig | HypernetworkConfig):
        """Start a training and follow it (see :meth:`follow`); its error is raised at the end. The training runs
        on when the page that started it goes away (the lock is the worker's until it ends)."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a training is already running; interrupt it or wait")
        try:
            cfg = dataclasses.replace(cfg, model=self.ui.model, device=self.ui.device, memory_mode=self.ui.memory_mode)
            self._run_dir = run_dir_for(cfg)
            job = Job(id=str(len(self.jobs) + 1), kind="train-" + self._what(cfg), status="running",
                      total=cfg.steps, started=time.time())
            self._reporter = reporter = JobReporter(job)
            running = PageJob(cfg, job, reporter, self._what(cfg))
            self.jobs.append(running)
            threading.Thread(target=self._train, args=(running,), daemon=True, name="scal-sdt-page-training").start()
        except BaseException:
            self._lock.release()
            raise
        yield from self.follow(running)
        if running.error is not None:
            raise running.error

    def follow(self, running: PageJob, every: float = 1.0):
        """The page's view of ``running`` now (a fresh plot: nothing of an earlier run), then every ``every`` s
        until it ends, then once more."""
        yield self._update(running)
        while not running.done.wait(every):
            yield self._update(running)
        yield self._update(running)

    def attach(self, what: str):
        """What a page opened now shows for its ``what`` tab: the latest such job, followed while it runs."""
        latest = next((j for j in reversed(self.jobs) if j.what == what), None)
        if latest is None:
            yield {"text": "", "progress": "", "plot": None, "preview": None, "jobs": self.jobs_html()}
            return
        for update in self.follow(latest):
            if latest.error is not None:
                update["text"] = error_html(latest.error) + update["text"]
            yield update

    def tab(self, what: str, page: gr.Blocks) -> dict:
        """training_tab's arguments for the ``what`` tab of ``page``: streamed runs, steering, reconnection."""
        return dict(run=self.run, interrupt=self.interrupt, streaming=True, steer=self.steer,
                    attach=lambda: self.attach(what), page=page, enqueue=self.enqueue,
                    native_resolution=lambda: self.host().native_resolution, evaluate=self.evaluate, keep=self.keep)

    def jobs_html(self) -> str:
        """This page session's trainings, newest first, with their state."""
        if not self.jobs:
            return ""
        rows = "".join(
            f"<tr data-state='{j.job.status}'><td>{j.job.id}</td><td>{j.what}</td><td>{html.escape(j.cfg.name)}</td>"
            f"<td>{j.job.status}</td><td>{j.job.step}/{j.job.total}</td>"
            f"<td>{time.strftime('%H:%M:%S', time.localtime(j.job.started))}</td></tr>" for j in reversed(self.jobs))
        return ("<table class='scal-sdt-jobs'><tr><th>#</th><th>training</th><th>name</th><th>state</th>"
                f"<th>step</th><th>started</th></tr>{rows}</table>")

    @staticmethod
    def _what(cfg) -> str:
        return ("hypernetwork" if isinstance(cfg, HypernetworkConfig) else "checkpoint"
                if isinstance(cfg, DreamBoothConfig) else "lora" if isinstance(cfg, LoraConfig) else "embedding")

    def _train(self, running: PageJob):
        cfg, reporter, job = running.cfg, running.reporter, running.job
        try:  # the form sends every field: the changed ones count as given; a fine-tune puts the page's model back
            run = runs.prepare(cfg, self.host(), say=reporter.message)
            running.cfg = run.cfg
            running.result = runs.train(run, reporter)
            job.status = "interrupted" if running.result.interrupted else "finished"
        except Exception as e:  # shown on the page
            running.error, job.status, job.error = e, "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished = time.time()
            self._lock.release()
            running.done.set()

    def _update(self, running: PageJob) -> dict:
        """Text, progress, plot and latest preview of ``running``: only files written since it started (a new run
        under an earlier run's name starts with an empty plot)."""
        cfg, job = running.cfg, running.job
        run_dir = run_dir_for(cfg)

        def fresh(path: Path) -> bool:
            return path.exists() and path.stat().st_mtime >= job.started - 1e-3

        previews = sorted((p for p in (run_dir / "images").glob("*.png") if fresh(p)), key=lambda p: p.stat().st_mtime)
        result = running.result
        text = "<br>".join(html.escape(say(m)) for m in job.messages[-6:])
        if result is not None:
            state = "interrupted" if result.interrupted else "finished"
            text = (f"<p>{running.what.capitalize().replace('Lora', 'LoRA')} <b>{html.escape(cfg.name)}</b> {state} at step {result.step}: "
                    f"{html.escape(str(result.final_path))}</p>" + text)
        plot = run_dir / "loss.png"
        return {"text": text, "progress": f"step {job.step}/{cfg.steps}" + loss_svg(running.reporter.losses[-2000:]),
                "plot": str(plot) if fresh(plot) else None, "preview": str(previews[-1]) if previews else None,
                "jobs": self.jobs_html()}

    def generate(self, cfg: GenerateConfig) -> tuple[list[str], str]:
        """Sample on the page's model; refused while a training uses it."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a training is running on this model; interrupt it or wait, then generate")
        try:
            cfg = dataclasses.replace(cfg, model=self.ui.model, device=self.ui.device, memory_mode=self.ui.memory_mode)
            named = Path(self.ui.hypernetworks) / f"{cfg.hypernetwork}.pt"
            if cfg.hypernetwork and not Path(cfg.hypernetwork).is_file() and named.is_file():
                cfg = dataclasses.replace(cfg, hypernetwork=str(named))  # a name from the page's folder
            notes: list[str] = []
            paths = generate(cfg, self.host(), report=notes.append)
            return [str(p) for p in paths], "<br>".join(notes + [f"{len(paths)} image(s) in {cfg.out}"])
        finally:
            self._lock.release()

    def library_folders(self) -> list[str]:
        """The page's own folders that exist: its embeddings, hypernetworks, LoRAs and checkpoints."""
        return [f for f in (self.ui.out, self.ui.hypernetworks, self.ui.loras, self.ui.checkpoints) if Path(f).is_dir()]

    def library_host(self):
        """The page's model for the Library's fit and previews; refused while a training uses it."""
        if self._lock.locked():
            raise RuntimeError("a training is running on this model; the library's fit and previews wait for it")
        return self.host()

    def evaluate(self, cfg, options: dict):
        """The saved steps of the run of ``cfg`` (the form's name and log folder) compared on the page's model;
        refused while a training uses it."""
        from ..evaluate.config import EvaluateConfig
        from ..evaluate.run import evaluate_run

        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a training is running on this model; wait for it, then evaluate")
        try:
            return evaluate_run(EvaluateConfig(run_dir=str(run_dir_for(cfg)), device=self.ui.device,
                                               memory_mode=self.ui.memory_mode, **options), self.host(),
                                say=lambda _: None)
        finally:
            self._lock.release()

    @staticmethod
    def keep(cfg, step: int):
        from ..evaluate.run import keep_step

        return keep_step(run_dir_for(cfg), step)

    def steer(self, word: str):
        if self._run_dir is not None and self._lock.locked():
            control.request(self._run_dir, word)

    def interrupt(self):
        if self._reporter is not None:
            self._reporter.stop_requested.set()


#: the extension's page script (the editor's keyboard shortcuts) and style sheet (the WebUI loads both itself), beside
#: the package in a checkout or editable install
PAGE_SCRIPT = Path(__file__).resolve().parents[3] / "javascript" / "scal_sdt.js"
PAGE_STYLE = Path(__file__).resolve().parents[3] / "style.css"


def build_app(ui: UiConfig) -> gr.Blocks:
    trainer = StandaloneTrainer(ui)
    # Gradio 3-5 take the style sheet here, Gradio 6 in launch() (see launch_options)
    style = {"css": PAGE_STYLE.read_text(encoding="utf-8")} if (
        PAGE_STYLE.is_file() and "css" in inspect.signature(gr.Blocks.__init__).parameters) else {}
    with gr.Blocks(title="SCAL-SDT", **style) as app:
        gr.Markdown(f"## SCAL-SDT — model `{ui.model}`")
        with gr.Tab("Embedding"):
            forms = {}
            forms[EMBEDDING.elem_prefix] = training_tab(
                EMBEDDING, defaults={"out": ui.out, "data": "demo", "name": "my-embedding", "template": "filewords",
                                     **TOY_DEMO}, **trainer.tab("embedding", app))
        with gr.Tab("Hypernetwork"):
            forms[HYPERNETWORK.elem_prefix] = training_tab(
                HYPERNETWORK, defaults={"out": ui.hypernetworks, "name": "my-hypernetwork"},
                **trainer.tab("hypernetwork", app))
        with gr.Tab("DreamBooth"):
            forms[DREAMBOOTH.elem_prefix] = training_tab(
                DREAMBOOTH, defaults={"out": ui.checkpoints, "name": "my-dreambooth"},
                **trainer.tab("checkpoint", app))
        with gr.Tab("LoRA"):  # the held-out colour on the toy model, as the README's quality table measures it
            forms[LORA.elem_prefix] = training_tab(
                LORA, defaults={"out": ui.loras, "name": "my-lora", "data": "demo", "embeddings_out": ui.out},
                **trainer.tab("lora", app))
        with gr.Tab("Aesthetic embedding"):
            aesthetic_tab(lambda cfg: make_aesthetic_embedding(dataclasses.replace(cfg, model=ui.model,
                                                                                   device=ui.device)),
                          exclude=("model", "device"),
                          defaults={"clip": "toy" if ui.model == "toy" else "", "name": "my-look"})
        with gr.Tab("Generate"):
            generate = generate_tab(run=trainer.generate, defaults={"embeddings": ui.out, "out": "outputs", "n": 4,
                                                                    "hypernetwork": "",
                                                                    "prompt": "a large red star on a white background"})
        with gr.Tab("Queue"):
            queue_tab(trainer.queue)
        with gr.Tab("Tagger"):
            tagger = TaggingRunner()
            tagger_tab(tagger, defaults={"dir": "", "model": "toy" if ui.model == "toy" else "wd-vit-tagger-v3"},
                       demo_folder=TAGGER_DEMO_FOLDER)
        # last: they fill the other tabs' forms
        with gr.Tab("Choose a method"):
            chooser_tab(forms, family=lambda: family_hint(ui.model))
        with gr.Tab("Library"):
            library_tab(trainer.library, use=use_on_page,
                        use_targets=[generate["prompt"], generate["hypernetwork"], generate["lora"]])
    app.scal_sdt_trainer = trainer
    app.scal_sdt_tagger = tagger
    return app


def launch_options(app: gr.Blocks) -> dict:
    """What ``app.launch`` needs besides the address: the page script, the style sheet (Gradio 6), the folders
    whose files the page shows; and the queue set up so that a page reconnecting to a training (a generator that
    runs as long as it) never waits behind another page's."""
    params = inspect.signature(app.launch).parameters
    if int(gr.__version__.split(".")[0]) < 4:
        app.queue(concurrency_count=8)
    else:
        app.queue(default_concurrency_limit=8)
    extra = {"allowed_paths": [str(Path.cwd()), str(Path("~/.cache/scal-sdt").expanduser())]}
    if PAGE_SCRIPT.is_file() and "head" in params:
        extra["head"] = f"<script>{PAGE_SCRIPT.read_text(encoding='utf-8')}</script>"
    if PAGE_STYLE.is_file() and "css" in params:
        extra["css"] = PAGE_STYLE.read_text(encoding="utf-8")
    return extra


def serve(ui: UiConfig) -> None:
    app = build_app(ui)
    app.launch(server_name=ui.host, server_port=ui.port, inbrowser=False, **launch_options(app))
    while True:  # launch() returns in scripts on some Gradio versions
        time.sleep(3600)
