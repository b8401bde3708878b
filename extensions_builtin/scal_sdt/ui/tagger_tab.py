"""The Tagger tab: a form from TagConfig, Tag / Stop / Unload, live progress and the report with the tag
frequency of the folder. The same blocks in the WebUI (its own top-level tab) and on the standalone page."""
from __future__ import annotations

import html
import time
import typing

import gradio as gr

from ..toy_world.world import make_tagger_demo
from ..tagging.clean import CleanConfig, CleanReport
from ..tagging.config import TagConfig
from ..tagging.run import TagReport
from ..tagging.runner import TaggingRunner
from .editor_tab import editor_tab
from .form import build_form, error_html, say, values_to_config

ELEM_PREFIX = "scal_sdt_tag"
CLEAN_PREFIX = "scal_sdt_clean"


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


def clean_report_html(report: CleanReport) -> str:
    def items(title, rows):
        return f"<p>{title}:</p><ul>" + "".join(f"<li>{r}</li>" for r in rows) + "</ul>" if rows else ""

    e = html.escape
    out = [f"<p><b>{'Stopped' if report.interrupted else 'Done'}</b>: {report.images} images; "
           f"{len(report.crops)} face crop(s) and {len(report.inpainted)} cleaned copies in <code>{e(report.out)}</code>; "
           f"{len(report.no_face)} without a face; {len(report.text)} with text; {len(report.watermark)} watermarked; "
           f"{len(report.duplicate_groups)} duplicate group(s); {len(report.moved)} moved.</p>"]
    out.append(items("Text", [f"<code>{e(p)}</code>" for p in report.text]))
    out.append(items("Watermark", [f"<code>{e(p)}</code> ({s:.2f})" for p, s in report.watermark.items()]))
    out.append(items("Duplicates (the first is kept)", [" = ".join(f"<code>{e(p)}</code>" for p in g)
                                                        for g in report.duplicate_groups]))
    out.append(items("Moved", [f"<code>{e(a)}</code> → <code>{e(b)}</code>" for a, b in report.moved]))
    out.append(items("No face found", [f"<code>{e(p)}</code>" for p in report.no_face]))
    out.append(items("Skipped (unreadable)", [f"<code>{e(p)}</code>: {e(m)}" for p, m in report.failed]))
    return "".join(out)


def _stream(runner: TaggingRunner, cfg, render):
    for job, report in runner.run(cfg):
        rate = job.step / max(1e-9, time.time() - job.started)
        line = f"<p>{job.step}/{job.total} images, {rate:.1f} images/s</p>"
        yield line, render(report) if report else "<br>".join(html.escape(say(m)) for m in job.messages[-4:])


def _error(e: Exception) -> tuple[str, str]:
    return "", error_html(e)


def tagger_tab(runner: TaggingRunner, defaults: dict | None = None, editor_defaults: dict | None = None,
               demo_folder: str = "") -> dict:
    """Three sub-tabs: tag a folder, clean it, edit its tags. Tagging leads on: the folder it tagged fills Clean's
    and the editor's folder fields and opens in the editor; two buttons go there. ``demo_folder``: where the
    "demo pictures" button writes the toy world's untagged pictures ('' = no such button)."""
    folder = {"dir": (defaults or {}).get("dir", "")}
    with gr.Tabs(elem_id=f"{ELEM_PREFIX}_tabs") as tabs:
        with gr.Tab("Tag folder", id="tag", elem_id=f"{ELEM_PREFIX}_tab"):
            if demo_folder:
                with gr.Row():
                    gr.Markdown("Tag a folder of images: the captions are written beside them. No folder at hand? "
                                "Try the toy world's pictures (untagged shapes; the `toy` tagger knows them).")
                    demo = gr.Button("Use the demo pictures", size="sm", elem_id=f"{ELEM_PREFIX}_demo")
            form, tagged = _run_section(runner, TagConfig, ELEM_PREFIX, "Tag folder", report_html, defaults,
                                        ("dataset", "tags"), unload=True)
            with gr.Row():
                to_clean = gr.Button("Clean this folder →", size="sm", elem_id=f"{ELEM_PREFIX}_to_clean")
                to_edit = gr.Button("Edit its tags →", size="sm", elem_id=f"{ELEM_PREFIX}_to_edit")
        with gr.Tab("Clean", id="clean", elem_id=f"{CLEAN_PREFIX}_tab"):
            clean_form, _ = _run_section(runner, CleanConfig, CLEAN_PREFIX, "Clean folder", clean_report_html, folder,
                                         ("dataset", "faces"))
        with gr.Tab("Edit tags", id="edit", elem_id="scal_sdt_edit_tab"):
            editor = editor_tab(editor_defaults or folder)
    if demo_folder:
        demo.click(lambda: str(make_tagger_demo(demo_folder)), inputs=[], outputs=[form["dir"]])
    load_editor, editor_inputs, editor_outputs = editor["open"]
    same = [form["dir"], clean_form["dir"], editor["dir"]]
    tagged.then(lambda d: (d, d), inputs=[form["dir"]], outputs=same[1:]).then(
        load_editor, inputs=editor_inputs, outputs=editor_outputs)
    to_clean.click(lambda d: (d, gr.update(selected="clean")), inputs=[form["dir"]], outputs=[same[1], tabs])
    to_edit.click(lambda d: (d, gr.update(selected="edit")), inputs=[form["dir"]], outputs=[same[2], tabs]).then(
        load_editor, inputs=editor_inputs, outputs=editor_outputs)
    return {**form, **{f"clean_{k}": v for k, v in clean_form.items()}}


def _run_section(runner: TaggingRunner, config: type, prefix: str, label: str, render, values: dict | None,
                 open_groups: tuple[str, ...], unload: bool = False) -> tuple[dict, typing.Any]:
    """A form from ``config``, a start button that streams the run's progress and its report (``render``), Stop,
    and (taggers) Unload model. Returns the form and the start event (to chain what follows a run)."""
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(config, prefix, values=values, open_groups=open_groups, first=("dataset",))
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button(label, variant="primary", elem_id=f"{prefix}_start")
                stop = gr.Button("Stop", elem_id=f"{prefix}_stop")
                unload_button = gr.Button("Unload model", elem_id=f"{prefix}_unload") if unload else None
            progress = gr.HTML(elem_id=f"{prefix}_progress")
            result = gr.HTML(elem_id=f"{prefix}_result")
    names = list(form)

    def on_start(*values):
        try:
            yield from _stream(runner, values_to_config(config, names, list(values)), render)
        except (ValueError, OSError, RuntimeError) as e:
            yield _error(e)

    started = start.click(on_start, inputs=[form[n] for n in names], outputs=[progress, result])
    stop.click(lambda: runner.stop(), inputs=[], outputs=[])
    if unload_button is not None:
        unload_button.click(lambda: runner.unload(), inputs=[], outputs=[progress])
    return form, started
