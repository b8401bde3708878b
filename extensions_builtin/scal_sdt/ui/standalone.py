"""`scal-sdt ui`: the same tabs as in the WebUI, served without it, on a checkpoint file or a built-in model."""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import gradio as gr

from ..generate.config import GenerateConfig
from ..generate.sample import generate
from ..ui_config import UiConfig
from ..jobs import Job, JobReporter
from ..hypernetwork.config import HypernetworkConfig
from ..hypernetwork.trainer import train_hypernetwork
from ..config import changed_options
from ..textual_inversion.config import EmbeddingConfig, apply_apt_preset
from ..textual_inversion.trainer import train_embedding
from ..training import control
from ..training.run_setup import run_dir_for
from .training_tab import DREAMBOOTH, EMBEDDING, HYPERNETWORK, LORA, training_tab
from ..dreambooth.config import DreamBoothConfig
from ..dreambooth.trainer import train_dreambooth
from ..lora.config import LoraConfig
from ..lora.trainer import train_lora
from .generate_tab import generate_tab
from .tagger_tab import tagger_tab
from .aesthetic_tab import aesthetic_tab
from ..aesthetic.make import make_aesthetic_embedding
from ..tagging.runner import TaggingRunner
from .loss_svg import loss_svg


# the embedding tab's settings for the demo on the toy model (the held-out colour is learned in about 25 s on a CPU)
TOY_DEMO = {"init_text": "red", "steps": 400, "lr": "0.02", "batch_size": 8, "preview_every": 100,
            "save_every": 200}


class StandaloneTrainer:
    """Runs one training at a time on a lazily loaded model; streams progress to the page."""

    def __init__(self, ui: UiConfig):
        self.ui = ui
        self._host = None
        self._reporter: JobReporter | None = None
        self._run_dir: Path | None = None
        self._lock = threading.Lock()

    def host(self):
        if self._host is None:
            from ..host.standalone import load_host

            self._host = load_host(self.ui.model, self.ui.device, self.ui.memory_mode)
        return self._host

    def run(self, cfg: EmbeddingConfig | HypernetworkConfig):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a training is already running; interrupt it or wait")
        try:
            cfg = dataclasses.replace(cfg, model=self.ui.model, device=self.ui.device, memory_mode=self.ui.memory_mode)
            if isinstance(cfg, EmbeddingConfig) and cfg.apt_preset:  # the form sends every field: changed = given
                cfg = apply_apt_preset(cfg, changed_options(cfg) - {"mode"})
            self._run_dir = run_dir_for(cfg)
            job = Job(id="page", kind="train-" + self._what(cfg))
            self._reporter = reporter = JobReporter(job)
            losses = reporter.losses
            box: dict = {}
            worker = threading.Thread(target=self._train, args=(cfg, reporter, box), daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(1.0)
                yield self._update(cfg, job, losses, box)
            if "error" in box:
                raise box["error"]
            yield self._update(cfg, job, losses, box)
        finally:
            self._lock.release()

    @staticmethod
    def _what(cfg) -> str:
        return ("hypernetwork" if isinstance(cfg, HypernetworkConfig) else "checkpoint"
                if isinstance(cfg, DreamBoothConfig) else "lora" if isinstance(cfg, LoraConfig) else "embedding")

    def _train(self, cfg, reporter, box):
        try:
            if isinstance(cfg, DreamBoothConfig):  # fine-tuned in place, then put back: the page's model stays
                with self.host().weights_kept(cfg.train_text_encoder):
                    box["result"] = train_dreambooth(cfg, self.host(), reporter)
                return
            trainer = (train_hypernetwork if isinstance(cfg, HypernetworkConfig)
                       else train_lora if isinstance(cfg, LoraConfig) else train_embedding)  # LoRA: weights untouched
            box["result"] = trainer(cfg, self.host(), reporter)
        except Exception as e:  # shown on the page
            box["error"] = e

    def _update(self, cfg, job, losses, box) -> dict:
        run_dir = run_dir_for(cfg)
        previews = sorted((run_dir / "images").glob("*.png"), key=lambda p: p.stat().st_mtime)
        result = box.get("result")
        text = "<br>".join(job.messages[-6:])
        if result is not None:
            state = "interrupted" if result.interrupted else "finished"
            what = self._what(cfg).capitalize().replace("Lora", "LoRA")
            text = (f"<p>{what} <b>{cfg.name}</b> {state} at step {result.step}: "
                    f"{result.final_path}</p>" + text)
        plot = run_dir / "loss.png"
        return {"text": text, "progress": f"step {job.step}/{cfg.steps}" + loss_svg(losses[-2000:]),
                "plot": str(plot) if plot.exists() else None, "preview": str(previews[-1]) if previews else None}

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

    def steer(self, word: str):
        if self._run_dir is not None and self._lock.locked():
            control.request(self._run_dir, word)

    def interrupt(self):
        if self._reporter is not None:
            self._reporter.stop_requested.set()


def build_app(ui: UiConfig) -> gr.Blocks:
    trainer = StandaloneTrainer(ui)
    with gr.Blocks(title="SCAL-SDT") as app:
        gr.Markdown(f"## SCAL-SDT — model `{ui.model}`")
        with gr.Tab("Embedding"):
            training_tab(EMBEDDING, run=trainer.run, interrupt=trainer.interrupt, streaming=True, steer=trainer.steer,
                         defaults={"out": ui.out, "data": "demo", "name": "my-embedding", "template": "filewords",
                                   **TOY_DEMO})
        with gr.Tab("Hypernetwork"):
            training_tab(HYPERNETWORK, run=trainer.run, interrupt=trainer.interrupt, streaming=True,
                         steer=trainer.steer, defaults={"out": ui.hypernetworks, "name": "my-hypernetwork"})
        with gr.Tab("DreamBooth"):
            training_tab(DREAMBOOTH, run=trainer.run, interrupt=trainer.interrupt, streaming=True, steer=trainer.steer,
                         defaults={"out": ui.checkpoints, "name": "my-dreambooth"})
        with gr.Tab("LoRA"):  # the held-out colour on the toy model, as the README's quality table measures it
            training_tab(LORA, run=trainer.run, interrupt=trainer.interrupt, streaming=True, steer=trainer.steer,
                         defaults={"out": ui.loras, "name": "my-lora", "data": "demo", "embeddings_out": ui.out})
        with gr.Tab("Aesthetic embedding"):
            aesthetic_tab(lambda cfg: make_aesthetic_embedding(dataclasses.replace(cfg, model=ui.model,
                                                                                   device=ui.device)),
                          exclude=("model", "device"),
                          defaults={"clip": "toy" if ui.model == "toy" else "", "name": "my-look"})
        with gr.Tab("Generate"):
            generate_tab(run=trainer.generate, defaults={"embeddings": ui.out, "out": "outputs", "n": 4,
                                                         "hypernetwork": "",
                                                         "prompt": "a large red star on a white background"})
        with gr.Tab("Tagger"):
            tagger = TaggingRunner()
            tagger_tab(tagger, defaults={"dir": "", "model": "toy" if ui.model == "toy" else "wd-vit-tagger-v3"})
    app.scal_sdt_trainer = trainer
    app.scal_sdt_tagger = tagger
    return app


#: the extension's page script (the editor's keyboard shortcuts), beside the package in a checkout or editable install
PAGE_SCRIPT = Path(__file__).resolve().parents[3] / "javascript" / "scal_sdt.js"


def serve(ui: UiConfig) -> None:
    import inspect

    app = build_app(ui)
    app.queue()
    extra = {}
    if PAGE_SCRIPT.is_file() and "head" in inspect.signature(app.launch).parameters:
        extra["head"] = f"<script>{PAGE_SCRIPT.read_text(encoding='utf-8')}</script>"
    app.launch(server_name=ui.host, server_port=ui.port, inbrowser=False,
               allowed_paths=[str(Path.cwd()), str(Path("~/.cache/scal-sdt").expanduser())], **extra)
    while True:  # launch() returns in scripts on some Gradio versions
        time.sleep(3600)
