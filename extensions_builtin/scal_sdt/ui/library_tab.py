"""The Library tab (the page's, and the WebUI's SCAL-SDT Library): the model files of the folders in a table with
their fit to the loaded model, search and filter, the picked item's details and A/B previews, and "use"."""
from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import Callable

import gradio as gr
from PIL import Image

from ..library.catalogue import Item, scan, select
from ..library.config import LibraryConfig
from ..library.identify import summary
from ..library.previews import PREVIEWED, CheckpointOpener, previews, standalone_checkpoint
from .form import build_form, error_html, values_to_config

COLUMNS = ["name", "kind", "family", "fit", "details", "file"]
#: the options the tab shows (the folders, the model and the device are the host's; json is the command line's)
SHOWN = ("search", "kind", "fits_only", "prompt", "negative", "seed", "steps", "cfg_scale", "size", "aesthetic_weight",
         "aesthetic_steps", "aesthetic_lr", "checkpoint_previews", "cache")


def use_on_page(item: Item, prompt: str, hypernetwork: str, lora: str) -> tuple[str, str, str, str]:
    """The page's "use": into the Generate tab, an embedding's name into its prompt, a hypernetwork or LoRA file into
    its field (the page's sampler takes one of each)."""
    if item.kind == "embedding":
        return add_to_prompt(prompt, item.name), hypernetwork, lora, f"{item.name} added to Generate's prompt"
    if item.kind == "hypernetwork":
        return prompt, str(item.path), lora, f"Generate will apply the hypernetwork {item.name}"
    if item.kind in ("lora", "lycoris"):
        return prompt, hypernetwork, str(item.path), f"Generate will apply the LoRA {item.name}"
    raise ValueError(f"{item.name}: a {item.kind} is not used from a prompt ({item.why or 'see its details'})")


def prompt_token(item: Item, strength: float = 1.0) -> str:
    """What "use" writes into a prompt: an embedding's name, ``<lora:NAME:1>``, ``<hypernet:NAME:1>``."""
    if item.kind == "embedding":
        return item.name
    if item.kind in ("lora", "lycoris"):
        return f"<lora:{item.name}:{strength:g}>"
    if item.kind == "hypernetwork":
        return f"<hypernet:{item.name}:{strength:g}>"
    return ""


def add_to_prompt(prompt: str, token: str) -> str:
    """``prompt`` with ``token`` appended once (a prompt that has it already is kept)."""
    prompt = prompt or ""
    if not token or token in prompt:
        return prompt
    return f"{prompt.rstrip().rstrip(',')}, {token}" if prompt.strip() else token


class LibraryView:
    """The tab's state and actions, apart from Gradio (tests drive these): the items listed, by file."""

    def __init__(self, folders: Callable[[], list[str]], host: Callable[[], object | None],
                 open_checkpoint: CheckpointOpener | None = None):
        self.folders = folders
        self.host = host
        self.open_checkpoint = open_checkpoint  # a checkpoint's preview: how to sample on it
        self.items: dict[str, Item] = {}
        self.labels: dict[str, str] = {}  # list entry -> file

    def refresh(self, cfg: LibraryConfig) -> list[list]:
        host = self.host()
        items = select(scan(cfg.folders, host), cfg.search, cfg.kind, cfg.fits_only)
        self.items = {str(i.path): i for i in items}
        return [[i.name, i.kind, i.info["family"], {True: "fits", False: f"no: {i.why}", None: i.why}[i.fit],
                 summary(i.info).split(": ", 1)[-1].split("\n")[0], str(i.path)] for i in items]

    def choices(self) -> list[str]:
        """The item list's entries, ``NAME (KIND)`` (with the file where two share that): plain strings, as Gradio 3
        (the WebUI's) takes no (label, value) pairs."""
        labels = [f"{i.name} ({i.kind})" for i in self.items.values()]
        self.labels = {(label if labels.count(label) == 1 else f"{label} {file}"): file
                       for label, file in zip(labels, self.items)}
        return list(self.labels)

    def item(self, choice: str) -> Item:
        """The item of a list entry (or of its file)."""
        file = self.labels.get(choice, choice)
        if file not in self.items:
            raise ValueError("pick an item of the list first (refresh the list if the file is new)")
        return self.items[file]

    def opener(self, host) -> CheckpointOpener:
        """How a checkpoint is sampled for its preview: the given way, else loaded beside ``host`` on its device."""
        if self.open_checkpoint is not None:
            return self.open_checkpoint
        return lambda path: standalone_checkpoint(path, getattr(host, "device", "auto"))

    def details_html(self, choice: str) -> str:
        item = self.item(choice)
        from ..library.catalogue import USE

        fit = {True: "fits the loaded model", False: f"does not fit: {item.why}", None: item.why}[item.fit]
        info = {k: item.info.get(k) for k in ("details", "metadata", "webui_safe")}
        return (f"<h4>{html.escape(item.name)} — {item.kind}, {item.info['family']}</h4>"
                f"<p>{html.escape(fit)}</p><p>use: {html.escape(USE.get(item.kind, ''))}</p>"
                f"<pre>{html.escape(json.dumps(info, indent=1, default=str))}</pre>")

    def render(self, choice: str, cfg: LibraryConfig) -> tuple[list[tuple[str, str]], str]:
        item = self.item(choice)
        host = self.host()
        if host is None:
            raise ValueError("previews need a loaded model")
        if item.kind not in PREVIEWED:
            raise ValueError(f"{item.name}: a {item.kind} has no A/B preview")
        if item.kind == "checkpoint" and not cfg.checkpoint_previews:
            raise ValueError(f"{item.name}: tick 'checkpoint previews' to render it — it loads the checkpoint "
                             "(in the WebUI in place of the current model, loaded back afterwards)")
        got, rendered = previews(item, host, cfg.preview_settings(), cfg.cache, self.opener(host))
        note = f"rendered {rendered} image(s)" if rendered else "all from the cache"
        images = []
        for label, path in got.items():  # as pictures: a cache folder the page does not serve still shows
            with Image.open(path) as im:
                images.append((im.convert("RGB"), label))
        return images, f"{item.name}: {note} ({Path(cfg.cache).expanduser()})"


def library_tab(view: LibraryView, elem_prefix: str = "scal_sdt_lib", defaults: dict | None = None,
                use: Callable[..., tuple] | None = None, use_targets: list | None = None, use_js: str | None = None):
    """The tab, inside the current Blocks. "Use": ``use(item, *values of use_targets) -> (*their new values,
    message)``; the targets are the txt2img prompt in the WebUI, the Generate tab's fields on the page. ``use_js``
    runs in the browser after it (the WebUI's switch to txt2img)."""
    with gr.Row():
        with gr.Column(scale=2):
            # read at each page load: a folder made after start-up (the first embedding trained) is listed
            folders = gr.Textbox(label="folders", lines=3, value=lambda: "\n".join(view.folders()),
                                 info="one folder a line, searched recursively", elem_id=f"{elem_prefix}_folders")
            form = build_form(LibraryConfig, elem_prefix, exclude=[f.name for f in dataclasses.fields(LibraryConfig)
                                                                   if f.name not in SHOWN],
                              values=defaults, basic=("search", "kind", "fits_only"))
            refresh = gr.Button("Refresh", variant="primary", elem_id=f"{elem_prefix}_refresh")
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=COLUMNS, label="items", interactive=False, elem_id=f"{elem_prefix}_table")
            picked = gr.Dropdown(label="item", choices=[], elem_id=f"{elem_prefix}_item")
            with gr.Row():
                render = gr.Button("A/B previews", elem_id=f"{elem_prefix}_render")
                use_button = gr.Button("Use", elem_id=f"{elem_prefix}_use", visible=use is not None)
            result = gr.HTML(elem_id=f"{elem_prefix}_result")
            gallery = gr.Gallery(label="without / with", columns=3, elem_id=f"{elem_prefix}_gallery")
            details = gr.HTML(elem_id=f"{elem_prefix}_details")
    names = list(form)

    def config(folder_text, values) -> LibraryConfig:
        found = [line.strip() for line in (folder_text or "").splitlines() if line.strip()]
        return values_to_config(LibraryConfig, names, list(values), fixed={"folders": found})

    def on_refresh(folder_text, *values):
        try:
            rows = view.refresh(config(folder_text, values))
            choices = view.choices()
            return rows, gr.update(choices=choices, value=choices[0] if choices else None), f"{len(rows)} item(s)"
        except (ValueError, OSError, RuntimeError) as e:
            return [], gr.update(choices=[], value=None), error_html(e)

    def on_pick(file):
        try:
            return view.details_html(file) if file else ""
        except ValueError as e:
            return error_html(e)

    def on_render(file, folder_text, *values):
        try:
            images, text = view.render(file, config(folder_text, values))
            return images, text
        except (ValueError, OSError, RuntimeError) as e:
            return [], error_html(e)

    inputs = [folders] + [form[n] for n in names]
    refresh.click(on_refresh, inputs=inputs, outputs=[table, picked, result])
    picked.change(on_pick, inputs=[picked], outputs=[details])
    render.click(on_render, inputs=[picked] + inputs, outputs=[gallery, result])
    if use is not None:
        targets = list(use_targets or [])

        def on_use(file, *values):
            try:
                return use(view.item(file), *values)
            except (ValueError, OSError, RuntimeError) as e:
                return (*values, error_html(e))

        event = use_button.click(on_use, inputs=[picked, *targets], outputs=[*targets, result])
        if use_js:
            event.then(None, **_js(use_js))
    return {"folders": folders, "table": table, "item": picked, "gallery": gallery, "result": result, **form}


def _js(code: str) -> dict:
    from .form import js_kwarg

    return js_kwarg(code)
