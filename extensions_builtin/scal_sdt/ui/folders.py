"""A folder picker for a form's folder fields that works on every Gradio the forms serve (3.41 to 6): a "browse"
button beside the field lists the sub-folders of what the field says (and its parent, to go up); picking one fills the field."""
from __future__ import annotations

import typing
from pathlib import Path

import gradio as gr

MAX_LISTED = 300


def sub_folders(value: str) -> list[str]:
    """The parent of ``value`` (to go up; absolute) and its sub-folders (as typed: relative stays relative), sorted,
    hidden ones left out; for a value that is not a folder (yet), those of the nearest folder above it."""
    base = Path(value.strip() or ".").expanduser()
    while not base.is_dir() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        base = Path(".")
    try:
        children = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: p.name.lower())[:MAX_LISTED]
    except OSError:  # unreadable: only the way up
        children = []
    return [str(base.resolve().parent)] + [str(p) for p in children]


def folder_field(make: typing.Callable[[], typing.Any], elem_id: str):
    """``make()`` (a Textbox, made in the current Blocks context) with a small browse button beside it and, under
    them, the list of sub-folders the button fills; returns the Textbox."""
    with gr.Row(elem_classes=["scal-sdt-folder"]):
        field = make()
        browse = gr.Button("browse", size="sm", scale=0, min_width=72, elem_id=f"{elem_id}_browse",
                           elem_classes=["scal-sdt-browse"])
    listing = gr.Dropdown(choices=[], value=None, label="sub-folders (pick one; the first goes up)", visible=False,
                          allow_custom_value=True, elem_id=f"{elem_id}_folders")

    def show(value):
        return gr.update(choices=sub_folders(value or ""), value=None, visible=True)

    def pick(choice):
        if not choice:
            return gr.update(), gr.update()
        return choice, gr.update(choices=sub_folders(choice), value=None, visible=True)

    browse.click(show, inputs=[field], outputs=[listing])
    listing.select(pick, inputs=[listing], outputs=[field, listing])
    return field
