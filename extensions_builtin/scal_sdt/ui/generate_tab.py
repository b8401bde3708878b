"""The standalone page's Generate tab (the WebUI has txt2img): a form from GenerateConfig, a gallery, and the
embeddings of the page's folder usable by name, reloaded at every click so a new one works at once."""
from __future__ import annotations

from typing import Callable

import gradio as gr

from ..generate.config import GenerateConfig
from .training_tab import HOST_FIELDS
from .form import build_form, error_html, values_to_config


def generate_tab(run: Callable[[GenerateConfig], tuple[list[str], str]], elem_prefix: str = "scal_sdt_gen",
                 defaults: dict | None = None) -> dict:
    """``run(cfg)`` returns (image paths, a line of text). Returns field name → component."""
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(GenerateConfig, elem_prefix, exclude=HOST_FIELDS, values=defaults,
                              basic=("prompt", "negative", "n", "seed", "steps", "embeddings", "out"))
        with gr.Column(scale=2):
            start = gr.Button("Generate", variant="primary", elem_id=f"{elem_prefix}_start")
            result = gr.HTML(elem_id=f"{elem_prefix}_result")
            gallery = gr.Gallery(label="images", elem_id=f"{elem_prefix}_gallery", columns=4)
    names = list(form)

    def on_generate(*values):
        try:
            paths, text = run(values_to_config(GenerateConfig, names, list(values)))
            return paths, text
        except (ValueError, OSError, RuntimeError) as e:
            return [], error_html(e)

    start.click(on_generate, inputs=[form[n] for n in names], outputs=[gallery, result])
    return form
