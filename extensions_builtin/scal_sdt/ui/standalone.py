"""`scal-sdt ui`: the same tabs as in the WebUI, served without it, on a checkpoint file or a built-in model."""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import gradio as gr

from ..ui_config import UiConfig
from ..jobs import Job, JobReporter
from ..textual_inversion.config import EmbeddingConfig
from ..textual_inversion.trainer import train_embedding
from ..training import control
from ..training.run_setup import run_dir_for
from .embedding_tab import embedding_tab
from .loss_svg import loss_svg


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

    def run(self, cfg: EmbeddingConfig):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a training is already running; interrupt it or wait")
        try:
            cfg = dataclasses.replace(cfg, model=self.ui.model, device=self.ui.device, memory_mode=self.ui.memory_mode)
            self._run_dir = run_dir_for(cfg)
            job = Job(id="page", kind="train-embedding")
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

    def _train(self, cfg, reporter, box):
        try:
            box["result"] = train_embedding(cfg, self.host(), reporter)
        except Exception as e:  # shown on the page
            box["error"] = e

    def _update(self, cfg, job, losses, box) -> dict:
        run_dir = run_dir_for(cfg)
        previews = sorted((run_dir / "images").glob("*.png"), key=lambda p: p.stat().st_mtime)
        result = box.get("result")
        text = "<br>".join(job.messages[-6:])
        if result is not None:
            state = "interrupted" if result.interrupted else "finished"
            text = f"<p>Embedding <b>{cfg.name}</b> {state} at step {result.step}: {result.final_path}</p>" + text
        plot = run_dir / "loss.png"
        return {"text": text, "progress": f"step {job.step}/{cfg.steps}" + loss_svg(losses[-2000:]),
                "plot": str(plot) if plot.exists() else None, "preview": str(previews[-1]) if previews else None}

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
            embedding_tab(run=trainer.run, interrupt=trainer.interrupt, streaming=True, steer=trainer.steer,
                          defaults={"out": ui.out, "data": "demo", "name": "my-embedding"})
    app.scal_sdt_trainer = trainer
    return app


def serve(ui: UiConfig) -> None:
    app = build_app(ui)
    app.queue()
    app.launch(server_name=ui.host, server_port=ui.port, inbrowser=False, allowed_paths=[str(Path.cwd())])
    while True:  # launch() returns in scripts on some Gradio versions
        time.sleep(3600)
