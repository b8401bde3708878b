"""The training tab's "Evaluate saved steps" panel, below the loss plot: the run of the form's name compared step by
step (evaluate/), the grid, the scores plot, the suggested step with its reason, and "Keep this one"."""
from __future__ import annotations

import dataclasses
import html
from typing import Callable

import gradio as gr

from ..config import coerce, field_type
from ..evaluate.config import EvaluateConfig
from ..evaluate.run import Evaluation
from .form import component_for, error_html

#: the EvaluateConfig fields the panel offers (the run folder comes from the form's name and log folder)
PANEL_FIELDS = ("prompts", "strengths", "images", "aesthetic", "aesthetic_weights", "clip")
FIELDS = {f.name: f for f in dataclasses.fields(EvaluateConfig)}


def evaluation_html(result: Evaluation) -> str:
    e = html.escape
    keys = [k for k in ("val_loss", "fidelity", "prompt", "leakage") if any(r.get(k) is not None for r in result.rows)]
    names = {"val_loss": "validation loss", "fidelity": "fidelity", "prompt": "prompt match", "leakage": "leakage"}
    rows = "".join(f"<tr{' class=scal-sdt-suggested' if r['step'] == result.suggested else ''}><td>{r['step']}</td>"
                   + "".join(f"<td>{r[k]:.4f}</td>" if r.get(k) is not None else "<td>–</td>" for k in keys)
                   + "</tr>" for r in result.rows)
    return (f"<p><b>Suggested: step {result.suggested}</b> — {e(result.reason)}</p>"
            f"<table class='scal-sdt-scores'><tr><th>step</th>{''.join(f'<th>{names[k]}</th>' for k in keys)}</tr>"
            f"{rows}</table>" + "".join(f"<p>{e(n)}</p>" for n in result.notes)
            + f"<p>page: <code>{e(str(result.files['page']))}</code></p>")


def evaluate_panel(elem_prefix: str, form_config: Callable[[list], object], form_inputs: list,
                   evaluate: Callable[[object, dict], Evaluation], keep: Callable[[object, int], object]) -> None:
    """``form_config(values)``: the training config from the form's values (``form_inputs``);
    ``evaluate(train_cfg, options)`` compares its run's saved steps; ``keep(train_cfg, step)`` copies one to the
    result's name and returns the path."""
    with gr.Accordion("Evaluate saved steps", open=False, elem_id=f"{elem_prefix}_evaluate_group"):
        field = lambda name: component_for(EvaluateConfig, FIELDS[name], f"{elem_prefix}_evaluate")  # noqa: E731
        fields = [field("prompts")]
        with gr.Row():
            fields += [field("strengths"), field("images")]
        with gr.Row():
            fields += [field("aesthetic"), field("aesthetic_weights")]
        fields.append(field("clip"))
        with gr.Row():
            run = gr.Button("Evaluate", elem_id=f"{elem_prefix}_evaluate_start")
            step = gr.Number(label="step to keep", value=None, precision=0, elem_id=f"{elem_prefix}_keep_step")
            keep_button = gr.Button("Keep this one", elem_id=f"{elem_prefix}_keep")
        report = gr.HTML(elem_id=f"{elem_prefix}_evaluate_report")
        grid = gr.Image(label="saved steps (the suggested one framed)", interactive=False,
                        elem_id=f"{elem_prefix}_evaluate_grid")
        plot = gr.Image(label="scores per step", interactive=False, elem_id=f"{elem_prefix}_evaluate_plot")
    n = len(form_inputs)

    def on_evaluate(*values):
        try:
            options = {name: coerce(name, field_type(EvaluateConfig, FIELDS[name]),
                                    v.strip() if isinstance(v, str) else v)
                       for name, v in zip(PANEL_FIELDS, values[n:]) if v not in (None, "")}  # empty: the default
            result = evaluate(form_config(list(values[:n])), options)
            return evaluation_html(result), str(result.files["grid"]), str(result.files["plot"]), result.suggested
        except (ValueError, OSError, RuntimeError) as e:
            return error_html(e), None, None, None

    def on_keep(*values):
        try:
            if values[n] is None:
                raise ValueError("step to keep: evaluate first, or give a saved step")
            path = keep(form_config(list(values[:n])), int(values[n]))
            return f"<p>kept step {int(values[n])} as <code>{html.escape(str(path))}</code></p>"
        except (ValueError, OSError, RuntimeError) as e:
            return error_html(e)

    run.click(on_evaluate, inputs=form_inputs + fields,
              outputs=[report, grid, plot, step])
    keep_button.click(on_keep, inputs=form_inputs + [step], outputs=[report])
