"""The "make an aesthetic embedding" panel: a form from AestheticEmbeddingConfig, Make, the result and the grid of
the images it came from. The same in the WebUI's Train tab and on the standalone page."""
from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from ..aesthetic.config import AestheticEmbeddingConfig
from ..aesthetic.make import AestheticResult
from .form import build_form, error_html, values_to_config

ELEM_PREFIX = "scal_sdt_ae"


def render(result: AestheticResult) -> str:
    lines = [f"<p>{result.images} image(s) → {html.escape(', '.join(p.name for p in result.paths))} in "
             f"{html.escape(str(result.paths[0].parent))}</p>"]
    if result.skipped:
        lines.append("<p>skipped: " + "<br>".join(html.escape(f"{p}: {why}") for p, why in result.skipped) + "</p>")
    return "".join(lines)


def aesthetic_tab(make: Callable[[AestheticEmbeddingConfig], AestheticResult], exclude: tuple[str, ...] = (),
                  defaults: dict | None = None) -> dict:
    """``make(cfg)`` makes the embedding (the host fills in what ``exclude`` leaves out)."""
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(AestheticEmbeddingConfig, ELEM_PREFIX, exclude=exclude, values=defaults,
                              open_groups=("embedding",))
        with gr.Column(scale=2):
            start = gr.Button("Make aesthetic embedding", variant="primary", elem_id=f"{ELEM_PREFIX}_start")
            result = gr.HTML(elem_id=f"{ELEM_PREFIX}_result")
            preview = gr.Image(label="made from", interactive=False, elem_id=f"{ELEM_PREFIX}_preview")
    names = list(form)

    def on_make(*values):
        try:
            out = make(values_to_config(AestheticEmbeddingConfig, names, list(values)))
        except (ValueError, OSError, RuntimeError) as e:
            return error_html(e), None
        grids = [str(p) for p in out.paths if p.name.endswith(".preview.png")]
        return render(out), grids[0] if grids else None

    start.click(on_make, inputs=[form[n] for n in names], outputs=[result, preview])
    return form
