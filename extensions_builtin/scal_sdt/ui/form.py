"""A Gradio form generated from a config dataclass: one component per field, grouped as the config groups them.

Works with the Gradio the WebUI pins (3.41) and with current Gradio: only components and arguments both have.
"""
from __future__ import annotations

import dataclasses
import html
import typing

import gradio as gr

from ..config import MISSING, field_type, form_label, speak
from .folders import folder_field


def gradio_major() -> int:
    return int(gr.__version__.split(".")[0])


def js_kwarg(code: str) -> dict:
    """The click/change argument for client-side JavaScript: ``_js`` in Gradio 3, ``js`` from Gradio 4."""
    return {"_js": code} if gradio_major() < 4 else {"js": code}


def say(text: str) -> str:
    """A message for the page (and the WebUI's tabs): the options it names as the form labels them."""
    return speak(text, "page")


def error_html(e: Exception, tag: str = "p") -> str:
    """A refused input or a failed run, in the page's words."""
    return f'<{tag} class="scal-sdt-error">{type(e).__name__}: {html.escape(say(str(e)))}</{tag}>'


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def component_for(cls: type, f: dataclasses.Field, elem_prefix: str, value=None, offer: "Offer | None" = None):
    tp = field_type(cls, f)
    meta = dict(f.metadata, **({"suggestions": offer.choices, "help": offer.help} if offer else {}))
    label = form_label(f.name)
    value = _default(f) if value is None else value
    kwargs = dict(label=label, elem_id=f"{elem_prefix}_{f.name}")
    if meta.get("help"):
        kwargs["info"] = say(meta["help"])
    if tp is bool:
        return gr.Checkbox(value=bool(value), **kwargs)
    if meta.get("choices"):
        return gr.Dropdown(choices=list(meta["choices"]), value=value, **kwargs)
    if meta.get("suggestions"):
        offered = meta["suggestions"]() if callable(meta["suggestions"]) else meta["suggestions"]
        return gr.Dropdown(choices=list(offered), value=value, allow_custom_value=True, **kwargs)
    if tp in (int, float):
        return gr.Number(value=value, precision=0 if tp is int else None, **kwargs)
    return gr.Textbox(value="" if value is None else str(value), lines=1, **kwargs)


@dataclasses.dataclass(frozen=True)
class Offer:
    """What a host offers for a field instead of its config's help: a list to pick from (or type another value)."""

    choices: typing.Callable[[], list] | list
    help: str


def build_form(cls: type, elem_prefix: str, exclude: typing.Collection[str] = (), values: dict | None = None,
               open_groups: typing.Collection[str] = (), first: typing.Sequence[str] = (),
               offers: dict[str, Offer] | None = None, basic: typing.Sequence[str] = ()) -> dict[str, typing.Any]:
    """Create the components inside the current Blocks context; returns field name → component (in the config's
    field order, whatever the layout).
    ``basic``: the few fields people change first, shown in that order above the groups, outside any accordion.
    The other fields sit in one accordion per option group, closed unless in ``open_groups``; groups appear in the
    order of their fields, except the ``first`` ones. A folder field (``option(folder=True)``) gets a picker.
    ``offers``: field → what the host offers for it (the WebUI's checkpoint list for DreamBooth's model)."""
    values, offers = values or {}, offers or {}
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]
    by_name = {f.name: f for f in fields}
    groups: dict[str, list[dataclasses.Field]] = {}
    for f in fields:
        if f.name not in basic:
            groups.setdefault(f.metadata.get("group") or "options", []).append(f)
    made = {}

    def make(f: dataclasses.Field) -> None:
        def component():
            return component_for(cls, f, elem_prefix, values.get(f.name), offers.get(f.name))

        folder = f.metadata.get("folder") and f.name not in offers
        made[f.name] = folder_field(component, f"{elem_prefix}_{f.name}") if folder else component()

    if any(name in by_name for name in basic):
        with gr.Column(elem_id=f"{elem_prefix}_basic"):
            for name in basic:
                if name in by_name:
                    make(by_name[name])
    order = [g for g in first if g in groups] + [g for g in groups if g not in first]
    for group in order:
        with gr.Accordion(group, open=group in open_groups, elem_id=f"{elem_prefix}_group_{group.replace(' ', '_')}"):
            for f in groups[group]:
                make(f)
    return {f.name: made[f.name] for f in fields}


def values_to_config(cls: type, names: list[str], values: list, fixed: dict | None = None):
    """Turn the form's values (in ``names`` order) back into a config; numbers get their field's type."""
    types = {f.name: field_type(cls, f) for f in dataclasses.fields(cls)}
    data = dict(fixed or {})
    for name, value in zip(names, values):
        tp = types[name]
        if tp is int and value is not None:
            value = int(value)
        elif tp is float and value is not None:
            value = float(value)
        elif tp is str and value is None:
            value = ""
        data[name] = value
    return cls(**data)
