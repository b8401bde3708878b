"""The Train tab's chooser ("which method?"): goal, pictures, card memory and family give the method, its presets,
the expected memory and time and the reason (library/chooser.py); the chosen method's form is filled in."""
from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from ..library.chooser import FAMILIES, GOAL_HELP, GOALS, METHODS, choose
from .form import error_html

#: a chooser method -> the training form it fills (the tabs' elem prefixes)
FORM_OF = {method: prefix for method, (_, _, prefix) in METHODS.items()}


def family_hint(model: str) -> str:
    """The family of a built-in model name or a model file (read from its keys), else sd1."""
    from pathlib import Path

    from ..aesthetic.make import BUILT_IN
    from ..library.identify import inspect_file

    if model in BUILT_IN:
        return BUILT_IN[model].name
    if Path(model).is_file():
        found = inspect_file(model)["family"]
        return found if found in FAMILIES else "sd1"
    return "sd1"


def answer_html(choice) -> str:
    lines = [f"<h4>{html.escape(choice.method)}</h4><p>{html.escape(choice.reason)}</p>",
             f"<p>expected: about {choice.memory_gb:.1f} GB on the card, {choice.minutes:.0f} min on an H200 (longer "
             f"on a consumer card)</p>",
             f"<p>the form of <b>{html.escape(choice.tab)}</b> is filled in: "
             + html.escape(", ".join(f"{k} = {v}" for k, v in choice.options.items()) or "nothing to set") + "</p>"]
    if choice.also:
        lines.append(f"<p>also: {html.escape(choice.also)}</p>")
    lines += [f"<p class='scal-sdt-error'>{html.escape(w)}</p>" for w in choice.warnings]
    lines += [f"<p>instead: {html.escape(a)}</p>" for a in choice.alternatives]
    basis = [f"<li>measured: {html.escape(m)}</li>" for m in choice.measured]
    basis += [f"<li>scaled, not measured: {html.escape(m)}</li>" for m in choice.scaled]
    if basis:
        lines.append("<p>where the numbers come from:</p><ul>" + "".join(basis) + "</ul>")
    return "".join(lines)


def fill(choice, targets: list[tuple[str, str]]) -> list:
    """One update per (form prefix, field) target: the chosen form's options, nothing elsewhere."""
    prefix = FORM_OF[choice.method]
    return [gr.update(value=choice.options[name]) if p == prefix and name in choice.options else gr.update()
            for p, name in targets]


def chooser_tab(forms: dict[str, dict], family: str | Callable[[], str] = "sd1", elem_prefix: str = "scal_sdt_choose"):
    """``forms``: a training tab's elem prefix -> its form (field name -> component), as training_tab returns it."""
    with gr.Row():
        with gr.Column():
            goal = gr.Dropdown(choices=list(GOALS), value="subject", label="goal", info=GOAL_HELP,
                               elem_id=f"{elem_prefix}_goal")
            images = gr.Number(value=10, precision=0, label="pictures", elem_id=f"{elem_prefix}_images")
            vram = gr.Number(value=8, label="card memory (GB)", elem_id=f"{elem_prefix}_vram_gb")
            fam = gr.Dropdown(choices=list(FAMILIES), value=family() if callable(family) else family,
                              label="model family", elem_id=f"{elem_prefix}_family")
            go = gr.Button("Choose and fill the form", variant="primary", elem_id=f"{elem_prefix}_go")
        with gr.Column():
            answer = gr.HTML(elem_id=f"{elem_prefix}_answer")
    targets = [(prefix, name) for prefix, form in forms.items() for name in form
               if name in ("preset", "mode", "apt_preset", "steps", "network", "rank")]

    def on_choose(goal_, images_, vram_, family_):
        try:
            choice = choose(goal_, int(images_ or 0), float(vram_ or 0), family_)
        except (ValueError, TypeError) as e:
            return [error_html(e)] + [gr.update() for _ in targets]
        return [answer_html(choice)] + fill(choice, targets)

    go.click(on_choose, inputs=[goal, images, vram, fam],
             outputs=[answer] + [forms[p][n] for p, n in targets])
    return {"goal": goal, "images": images, "vram_gb": vram, "family": fam, "answer": answer}
