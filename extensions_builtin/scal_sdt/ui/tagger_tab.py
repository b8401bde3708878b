"""The Tagger tab: a form from TagConfig, Tag / Stop / Unload, live progress and the report with the tag
frequency of the folder. The same blocks in the WebUI (its own top-level tab) and on the standalone page."""
from __future__ import annotations

import html
import time

import gradio as gr

from ..tagging.config import TagConfig
from ..tagging.run import TagReport
from ..tagging.runner import TaggingRunner
from .form import build_form, values_to_config

ELEM_PREFIX = "scal_sdt_tag"


def report_html(report: TagReport, top: int = 100) -> str:
    state = "Stopped" if report.interrupted else "Done"
    out = [f"<p><b>{state}</b>: {report.written} caption(s) written, {report.unchanged} already right, "
           f"{report.kept} kept (had a caption), {len(report.failed)} skipped; {report.inferred} through the model, "
           f"{report.from_cache} from the cache. <b>{report.images_per_second:.1f} images/s</b> on "
           f"<code>{html.escape(report.provider)}</code>.</p>"]
    out += [f"<p>model: <code>{html.escape(m)}</code></p>" for m in report.models]
    if report.failed:
        out.append("<p>Skipped (unreadable):</p><ul>" + "".join(
            f"<li><code>{html.escape(p)}</code>: {html.escape(e)}</li>" for p, e in report.failed) + "</ul>")
    if report.frequency:
        rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{n}</td></tr>" for t, n in report.frequency.most_common(top))
        out.append(f"<p>Tag frequency ({len(report.frequency)} tags, top {min(top, len(report.frequency))}):</p>"
                   f"<table class='scal-sdt-freq'><tr><th>tag</th><th>images</th></tr>{rows}</table>")
    return "".join(out)


def tagger_tab(runner: TaggingRunner, defaults: dict | None = None) -> dict:
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(TagConfig, ELEM_PREFIX, values=defaults, open_groups=("dataset", "tags"),
                              first=("dataset",))
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button("Tag folder", variant="primary", elem_id=f"{ELEM_PREFIX}_start")
                stop = gr.Button("Stop", elem_id=f"{ELEM_PREFIX}_stop")
                unload = gr.Button("Unload model", elem_id=f"{ELEM_PREFIX}_unload")
            progress = gr.HTML(elem_id=f"{ELEM_PREFIX}_progress")
            result = gr.HTML(elem_id=f"{ELEM_PREFIX}_result")
    names = list(form)

    def on_start(*values):
        try:
            cfg = values_to_config(TagConfig, names, list(values))
            for job, report in runner.run(cfg):
                rate = job.step / max(1e-9, time.time() - job.started)
                line = f"<p>{job.step}/{job.total} images, {rate:.1f} images/s</p>"
                yield line, report_html(report) if report else "<br>".join(html.escape(m) for m in job.messages[-4:])
        except (ValueError, OSError, RuntimeError) as e:
            yield "", f'<p class="scal-sdt-error">{type(e).__name__}: {html.escape(str(e))}</p>'

    start.click(on_start, inputs=[form[n] for n in names], outputs=[progress, result])
    stop.click(lambda: runner.stop(), inputs=[], outputs=[])
    unload.click(lambda: runner.unload(), inputs=[], outputs=[progress])
    return form
