"""A training tab (Embedding, Hypernetwork, DreamBooth, LoRA): a form from the trainer's config, Start / Interrupt, loss plot,
preview. The same blocks in the WebUI's Train tab and on the standalone page."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Iterator

import gradio as gr

from ..dreambooth.config import DreamBoothConfig
from ..hypernetwork.config import HypernetworkConfig
from ..lora.config import LoraConfig
from ..textual_inversion.config import EmbeddingConfig
from ..config_files import past_options, write_config
from ..runs import trainer_for
from .evaluate_panel import evaluate_panel
from .data_check import FIELDS as CHECK_FIELDS, check_data
from .form import build_form, error_html, js_kwarg, values_to_config

# what the host decides, not the form: the WebUI's loaded model and its device flags
HOST_FIELDS = ("model", "device", "memory_mode")
PREVIEW_FROM_TXT2IMG = ("preview_prompt", "preview_negative", "preview_steps", "preview_cfg", "preview_seed")


@dataclass(frozen=True)
class TrainerKind:
    """What differs between the training tabs."""

    config: type  # the trainer's config dataclass
    elem_prefix: str  # elem_id prefix of every component (javascript/scal_sdt.js knows it)
    button: str  # the start button's label
    first_group: str  # the form's first group
    basic: tuple[str, ...]  # the few options people change first, above the closed groups
    method: str  # the method's name for the data check (audit/config.py METHODS)


BASIC = ("name", "data", "task_preset", "steps", "lr", "preset")
EMBEDDING = TrainerKind(EmbeddingConfig, "scal_sdt_ti", "Train embedding", "embedding",
                        ("name", "data", "init_text", "task_preset", "steps", "lr", "preset"), "embedding")
HYPERNETWORK = TrainerKind(HypernetworkConfig, "scal_sdt_hn", "Train hypernetwork", "hypernetwork", BASIC,
                           "hypernetwork")
DREAMBOOTH = TrainerKind(DreamBoothConfig, "scal_sdt_db", "Train DreamBooth", "dreambooth",
                         ("model", "name", "instance_data", "instance_prompt", "task_preset", "steps", "lr", "preset"),
                         "dreambooth")
LORA = TrainerKind(LoraConfig, "scal_sdt_lora", "Train LoRA", "lora",
                   ("model", "name", "instance_data", "instance_prompt", "task_preset", "network", "rank", "steps", "lr",
                    "preset"), "lora")


def training_tab(kind: TrainerKind, run: Callable, interrupt: Callable[[], None],
                 exclude: tuple[str, ...] = HOST_FIELDS, defaults: dict | None = None,
                 txt2img_preview_params: list | None = None, progress_js: bool = False,
                 wrap: Callable = lambda fn: fn, streaming: bool = False,
                 steer: Callable[[str], None] | None = None, offers: dict | None = None,
                 attach: Callable[[], Iterator[dict]] | None = None, page: "gr.Blocks | None" = None,
                 enqueue: Callable[[object], str] | None = None,
                 native_resolution: Callable[[], int] = lambda: 512, audit: Callable | None = None,
                 evaluate: Callable | None = None, keep: Callable | None = None) -> dict:
    """Build the tab's components in the current Blocks context.

    ``run(cfg)`` trains and returns {"text", "plot", "preview"}; ``interrupt()`` asks it to stop.
    ``txt2img_preview_params`` (the WebUI's [prompt, negative, steps, sampler, cfg, seed, width, height]) lets the
    user take the preview settings from txt2img. ``wrap`` wraps the click handler (the WebUI's GPU queue);
    ``progress_js`` hooks the WebUI's progress bar (javascript/scal_sdt.js). With ``streaming``, ``run(cfg)``
    yields such dicts while it works (plus "progress" HTML) and the page updates live. ``steer(word)`` asks the
    running training to "sample", "save" or "backup" after its current step. ``offers``: field → :class:`Offer`
    (what the host lists for a field). ``attach()`` (with ``page``, the Blocks, and ``streaming``) yields what a
    page opened or reloaded shows: the running training followed live (plot, previews, progress), and the page
    session's trainings (a "jobs" table). ``enqueue(cfg)`` (an "Add to queue" button) puts the form's run in the
    training queue and says where. "Check data" audits the form's data folder for the method (its
    resolution 0 is ``native_resolution()``) with ``audit(cfg)`` (default audit/run.py's, writing beside the page).
    ``evaluate(train_cfg, options)`` and ``keep(train_cfg, step)`` (both or neither) add the "Evaluate saved steps"
    panel below the loss plot (ui/evaluate_panel.py). Returns field name → component.
    """
    elem_prefix = kind.elem_prefix
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(kind.config, elem_prefix, exclude=exclude, values=defaults, basic=kind.basic,
                              first=(kind.first_group,), offers=offers)
            use_txt2img = gr.Checkbox(label="previews use the txt2img tab's prompt and settings", value=False,
                                      visible=txt2img_preview_params is not None, elem_id=f"{elem_prefix}_use_txt2img")
            with gr.Accordion("settings file", open=False, elem_id=f"{elem_prefix}_settings"):
                settings_path = gr.Textbox(label="settings file or past run", elem_id=f"{elem_prefix}_settings_path",
                                           info="Save: a .toml or .json file. Load: such a file, a run folder (its "
                                                "config.toml) or a result .safetensors (the options in its metadata)")
                with gr.Row():
                    load_settings = gr.Button("Load settings", elem_id=f"{elem_prefix}_load_settings")
                    save_settings = gr.Button("Save settings", elem_id=f"{elem_prefix}_save_settings")
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button(kind.button, variant="primary", elem_id=f"{elem_prefix}_start")
                stop = gr.Button("Interrupt", elem_id=f"{elem_prefix}_interrupt")
                add = gr.Button("Add to queue", elem_id=f"{elem_prefix}_enqueue", visible=enqueue is not None)
                check = gr.Button("Check data", elem_id=f"{elem_prefix}_check")
            with gr.Row(visible=steer is not None):
                steer_buttons = {word: gr.Button(f"{word.capitalize()} now", size="sm", elem_id=f"{elem_prefix}_{word}")
                                 for word in ("sample", "save", "backup")}
            # live progress: written by the WebUI's progress bar hook (javascript/scal_sdt.js) or streamed by the page;
            # never an output of the WebUI's wrapped call, whose last output gets the timing or the error
            progress = gr.HTML(elem_id=f"{elem_prefix}_progress")
            result = gr.HTML(elem_id=f"{elem_prefix}_result")
            plot = gr.Image(label="loss", interactive=False, elem_id=f"{elem_prefix}_plot")
            evaluation = gr.Column() if evaluate is not None else None
            preview = gr.Image(label="latest preview", interactive=False, elem_id=f"{elem_prefix}_preview",
                               elem_classes=["scal-sdt-preview"])
            jobs = gr.HTML(elem_id=f"{elem_prefix}_jobs", visible=attach is not None)
            with gr.Accordion("data check", open=True, elem_id=f"{elem_prefix}_check_group"):
                checked = gr.HTML(elem_id=f"{elem_prefix}_check_report")
                checked_picture = gr.Image(label="data check", interactive=False, elem_id=f"{elem_prefix}_check_picture")

    names = list(form)
    extra = list(txt2img_preview_params or [])

    def config_from(values):
        values = list(values)
        if progress_js:  # the WebUI's progress bar puts the task id first
            values = values[1:]
        form_values, use_t2i, t2i = values[:len(names)], values[len(names)], values[len(names) + 1:]
        if use_t2i and t2i:
            prompt, negative, steps, _sampler, cfg_scale, seed, _w, _h = t2i
            return values_to_config(kind.config, names + list(PREVIEW_FROM_TXT2IMG),
                                    form_values + [prompt, negative, int(steps), float(cfg_scale), int(seed)])
        return values_to_config(kind.config, names, form_values)

    def outputs_of(out: dict) -> tuple:
        first = (out.get("plot"), out.get("preview"), out.get("text", ""))
        return first + (out.get("progress", ""), out.get("jobs", "")) if streaming else first

    def error(e: Exception) -> tuple:
        return outputs_of({"text": error_html(e), "jobs": attach_jobs()})

    def attach_jobs() -> str:
        return next(attach(), {}).get("jobs", "") if attach is not None and streaming else ""

    if streaming:
        def on_start(*values):
            try:
                for out in run(config_from(values)):
                    yield outputs_of(out)
            except (ValueError, OSError, RuntimeError) as e:
                yield error(e)
    else:
        def on_start(*values):
            try:
                return outputs_of(run(config_from(values)))
            except (ValueError, OSError, RuntimeError) as e:
                return error(e)

    inputs = list(form.values()) + [use_txt2img] + extra
    # the WebUI's wrapped call gives its last output the timing or the error: result (a string) last there
    outputs = [plot, preview, result] + ([progress, jobs] if streaming else [])
    if progress_js:
        dummy = gr.Textbox(visible=False, elem_id=f"{elem_prefix}_task")
        start.click(wrap(on_start), inputs=[dummy] + inputs, outputs=outputs,
                    **js_kwarg(f"scalSdtStart_{elem_prefix}"))
    else:
        start.click(wrap(on_start), inputs=inputs, outputs=outputs)
    if attach is not None and streaming and page is not None:
        def on_open():
            for out in attach():
                yield outputs_of(out)

        page.load(on_open, inputs=[], outputs=outputs)
    stop.click(lambda: interrupt(), inputs=[], outputs=[])
    command = trainer_for(kind.config).command

    def on_save(path, *values):
        try:
            cfg = config_from(values)
            return f"<p>saved {html.escape(str(write_config(str(path).strip(), cfg, command)))}</p>"
        except (ValueError, OSError, RuntimeError) as e:
            return error_html(e)

    def on_load(path):
        """The form refilled from the file or past run; the fields the host decides keep theirs."""
        try:
            options, notes = past_options(str(path).strip(), kind.config, command)
        except (ValueError, OSError) as e:
            return [gr.update() for _ in names] + [error_html(e)]
        filled = [name for name in names if name in options]
        note = f"<p>loaded {len(filled)} option(s) from {html.escape(str(path))}</p>" + (
            f"<p>skipped: {html.escape('; '.join(notes))}</p>" if notes else "")
        return [gr.update(value=options[n]) if n in options else gr.update() for n in names] + [note]

    save_settings.click(on_save, inputs=[settings_path] + ([dummy] if progress_js else []) + inputs, outputs=[result])
    load_settings.click(on_load, inputs=[settings_path], outputs=[form[n] for n in names] + [result])
    if enqueue is not None:
        def on_enqueue(*values):
            try:
                return f"<p>{html.escape(enqueue(config_from(values)))}</p>"
            except (ValueError, OSError, RuntimeError) as e:
                return error_html(e)

        add.click(on_enqueue, inputs=([dummy] if progress_js else []) + inputs, outputs=[result])
    if evaluation is not None:
        with evaluation:
            evaluate_panel(elem_prefix, lambda values: values_to_config(kind.config, names, values), list(form.values()),
                           evaluate, keep)
    check_names = [n for n in CHECK_FIELDS if n in form]

    def on_check(*values):
        try:
            return check_data(kind.method, dict(zip(check_names, values)), native_resolution,
                              **({"audit": audit} if audit is not None else {}))
        except (ValueError, OSError, RuntimeError) as e:
            return error_html(e), None

    check.click(on_check, inputs=[form[n] for n in check_names], outputs=[checked, checked_picture])
    if steer is not None:
        for word, button in steer_buttons.items():
            button.click(lambda w=word: steer(w), inputs=[], outputs=[])
    return form
