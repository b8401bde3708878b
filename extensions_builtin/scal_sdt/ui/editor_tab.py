"""The dataset editor: a paged, thumbnail-cached gallery of a folder, a filter, the tag-frequency panel (a click
filters), bulk add / remove / replace / regex / de-duplicate on the filtered set or the selection, one caption
edited by hand, undo / redo, autocompletion from tag CSV files, keyboard shortcuts (javascript/scal_sdt.js:
n / p or arrows = next / previous, u = first untagged, Ctrl+Z / Ctrl+Y = undo / redo). Every edit is written at
once, atomically."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from ..tagging.editor import Dataset, TagVocabulary, thumbnail
from .form import say

PREFIX = "scal_sdt_edit"
PAGE = 48
THUMB_CACHE = "~/.cache/scal-sdt/thumbs"


class EditorSession:
    """What one page visitor has open: the dataset, the filter's result, the page, the current image, the selection."""

    def __init__(self, dataset: Dataset, vocabulary: TagVocabulary):
        self.dataset, self.vocabulary = dataset, vocabulary
        self.shown: list[int] = list(range(len(dataset)))
        self.query, self.page, self.current = "", 0, 0 if len(dataset) else None
        self.selection: list[int] = []

    def scope(self, which: str) -> list[int]:
        if which == "selection":
            if not self.selection:
                raise ValueError("the selection is empty: tick 'click adds to the selection' and click images")
            return list(self.selection)
        return list(self.shown)


def open_session(folder: str, caption_extension: str, vocab_files: str) -> EditorSession:
    if not folder or not Path(folder).is_dir():
        raise ValueError(f"dataset folder does not exist: {folder!r}")
    ds = Dataset(folder, caption_extension or ".txt")
    vocab = TagVocabulary()
    for path in [p.strip() for p in vocab_files.split(",") if p.strip()]:
        if not Path(path).is_file():
            raise ValueError(f"tag list {path} does not exist")
        vocab.add_csv(path)
    vocab.add_counts(ds.frequency())
    return EditorSession(ds, vocab)


def complete_last(s: EditorSession | None, text: str) -> list[str]:
    """Suggestions for the last comma-separated part of ``text``."""
    if s is None or not text:
        return []
    return s.vocabulary.complete(text.split(",")[-1].strip())


def accept_suggestion(text: str, choice: str) -> str:
    if not choice:
        return text
    parts = [p.strip() for p in (text or "").split(",")][:-1] + [choice]
    return ", ".join(p for p in parts if p)


def view(s: EditorSession | None, note: str = ""):
    """(gallery, frequency rows, current caption, current image label, status, page text) for the session."""
    if s is None:
        return [], [], "", "", note or "Load a folder.", ""
    pages = max(1, -(-len(s.shown) // PAGE))
    s.page = min(s.page, pages - 1)
    idx = s.shown[s.page * PAGE:(s.page + 1) * PAGE]
    cache = Path(THUMB_CACHE).expanduser()
    gallery = [(str(thumbnail(s.dataset.items[i].image, cache)), s.dataset.items[i].caption()[:80] or "(untagged)")
               for i in idx]
    freq = [[t, n] for t, n in s.dataset.frequency(s.shown).most_common()]
    current = s.dataset.items[s.current] if s.current is not None else None
    label = (f"{s.current + 1}/{len(s.dataset)}: {current.image.relative_to(s.dataset.folder)}" if current else "")
    if current is not None and current.sentence:  # the captioner's sentence, beside the tags below
        label += f"<br><i>sentence: {html.escape(current.sentence)}</i>"
    status = (f"{len(s.shown)} of {len(s.dataset)} images match; {len(s.selection)} selected; "
              f"{len(s.dataset.undo_stack)} edit(s) to undo. {note}")
    return gallery, freq, current.caption() if current else "", label, status, f"page {s.page + 1}/{pages}"


def editor_tab(defaults: dict | None = None) -> dict:
    """The editor's blocks; returns {"dir": its folder field, "open": (fn, inputs, outputs)}: the event that loads
    the folder the field names (the Tagger chains it after tagging)."""
    defaults = defaults or {}
    state = gr.State(None)
    with gr.Row():
        folder = gr.Textbox(label="dataset folder", value=defaults.get("dir", ""), elem_id=f"{PREFIX}_dir", scale=4)
        ext = gr.Textbox(label="caption extension", value=".txt", elem_id=f"{PREFIX}_ext", scale=1)
        vocab_files = gr.Textbox(label="tag lists for autocompletion (tagcomplete CSV or selected_tags.csv, "
                                       "comma-separated)", value=defaults.get("vocab", ""), elem_id=f"{PREFIX}_vocab",
                                 scale=4)
        load = gr.Button("Load", variant="primary", elem_id=f"{PREFIX}_load", scale=1)
    status = gr.HTML(elem_id=f"{PREFIX}_status")
    with gr.Row():
        query = gr.Textbox(label="filter: tags with and / or / not / ( ), * wildcards, tokens>75, untagged",
                           elem_id=f"{PREFIX}_filter", scale=5)
        apply_filter = gr.Button("Filter", elem_id=f"{PREFIX}_apply_filter", scale=1)
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="images", columns=8, height=520, allow_preview=False,
                                 elem_id=f"{PREFIX}_gallery")
            with gr.Row():
                prev_page = gr.Button("◀ page", size="sm", elem_id=f"{PREFIX}_prev_page")
                page_text = gr.HTML(elem_id=f"{PREFIX}_page")
                next_page = gr.Button("page ▶", size="sm", elem_id=f"{PREFIX}_next_page")
            select_mode = gr.Checkbox(label="click adds to the selection", value=False, elem_id=f"{PREFIX}_select")
        with gr.Column(scale=2):
            label = gr.HTML(elem_id=f"{PREFIX}_label")
            caption = gr.Textbox(label="caption of this image", lines=4, elem_id=f"{PREFIX}_caption")
            with gr.Row():
                prev_item = gr.Button("◀ previous", size="sm", elem_id=f"{PREFIX}_prev")
                save = gr.Button("Save caption", size="sm", variant="primary", elem_id=f"{PREFIX}_save")
                next_item = gr.Button("next ▶", size="sm", elem_id=f"{PREFIX}_next")
                untagged = gr.Button("first untagged", size="sm", elem_id=f"{PREFIX}_untagged")
            frequency = gr.Dataframe(headers=["tag", "images"], datatype=["str", "number"], interactive=False,
                                     label="tag frequency (click a tag to filter)", elem_id=f"{PREFIX}_frequency")
    with gr.Row():
        scope = gr.Radio(["filtered", "selection"], value="filtered", label="bulk edits apply to",
                         elem_id=f"{PREFIX}_scope")
        tags = gr.Textbox(label="tags (comma-separated; * wildcards to remove)", elem_id=f"{PREFIX}_tags", scale=3)
        suggestions = gr.Dropdown(label="suggestions", choices=[], value=None, allow_custom_value=True,
                                  elem_id=f"{PREFIX}_suggestions", scale=2)
        add_start = gr.Button("Add at start", size="sm", elem_id=f"{PREFIX}_add_start")
        add_end = gr.Button("Add at end", size="sm", elem_id=f"{PREFIX}_add_end")
        remove = gr.Button("Remove", size="sm", elem_id=f"{PREFIX}_remove")
    with gr.Row():
        old = gr.Textbox(label="replace tag", elem_id=f"{PREFIX}_old")
        new = gr.Textbox(label="with (empty = remove)", elem_id=f"{PREFIX}_new")
        replace = gr.Button("Replace", size="sm", elem_id=f"{PREFIX}_replace")
        pattern = gr.Textbox(label="regex on each tag", elem_id=f"{PREFIX}_pattern")
        repl = gr.Textbox(label="replacement (\\1 ...)", elem_id=f"{PREFIX}_repl")
        regex = gr.Button("Regex replace", size="sm", elem_id=f"{PREFIX}_regex")
        dedupe = gr.Button("Remove duplicate tags", size="sm", elem_id=f"{PREFIX}_dedupe")
        undo = gr.Button("Undo", size="sm", elem_id=f"{PREFIX}_undo")
        redo = gr.Button("Redo", size="sm", elem_id=f"{PREFIX}_redo")

    outputs = [state, gallery, frequency, caption, label, status, page_text]

    def guarded(fn):
        """Run an action on the session; a bad input becomes the status line, nothing is lost."""
        def run(s, *args):
            try:
                s, note = fn(s, *args)
            except (ValueError, OSError) as e:
                note = f'<span class="scal-sdt-error">{html.escape(say(str(e)))}</span>'
            return (s, *view(s, note))
        return run

    def on_load(_s, folder_v, ext_v, vocab_v):
        s = open_session(folder_v, ext_v, vocab_v)
        return s, f"loaded {len(s.dataset)} images"

    def with_session(fn):
        def run(s, *args):
            if s is None:
                raise ValueError("load a folder first")
            return fn(s, *args)
        return run

    @with_session
    def on_filter(s, q):
        s.shown, s.query, s.page = s.dataset.filter(q), q, 0
        return s, ""

    @with_session
    def on_select(s, select, index):
        i = s.shown[s.page * PAGE + index]
        if select:
            s.selection.remove(i) if i in s.selection else s.selection.append(i)
        s.current = i
        return s, ""

    @with_session
    def on_frequency_click(s, index):
        row = index[0] if isinstance(index, (list, tuple)) else index
        tag = s.dataset.frequency(s.shown).most_common()[row][0]
        s.shown, s.query, s.page = s.dataset.filter(tag.replace("(", "\\(").replace(")", "\\)")), tag, 0
        return s, f"filtered by {html.escape(tag)}"

    def move(step):
        @with_session
        def run(s):
            if s.shown:
                pos = s.shown.index(s.current) if s.current in s.shown else -1
                s.current = s.shown[(pos + step) % len(s.shown)]
                s.page = s.shown.index(s.current) // PAGE
            return s, ""
        return run

    @with_session
    def on_page(s, step):
        s.page = max(0, s.page + step)
        return s, ""

    @with_session
    def on_untagged(s):
        i = s.dataset.first_untagged(s.current if s.current is not None else -1)
        if i is None:
            return s, "every image has a caption"
        s.current = i
        if i in s.shown:
            s.page = s.shown.index(i) // PAGE
        return s, ""

    @with_session
    def on_save(s, text):
        if s.current is None:
            raise ValueError("no image is open")
        s.dataset.set_caption(s.current, text)
        return s, "caption saved"

    def bulk(action):
        @with_session
        def run(s, which, *args):
            change = action(s.dataset, s.scope(which), *args)
            if which == "filtered" and s.query:
                s.shown = s.dataset.filter(s.query)
            return s, f"{change.what}: {len(change.after)} caption(s) changed"
        return run

    @with_session
    def on_undo(s):
        change = s.dataset.undo()
        return s, f"undid {change.what}" if change else "nothing to undo"

    @with_session
    def on_redo(s):
        change = s.dataset.redo()
        return s, f"redid {change.what}" if change else "nothing to redo"

    def gallery_clicked(s, select, evt: gr.SelectData):  # Gradio fills in evt from the annotation
        return guarded(on_select)(s, select, evt.index)

    def frequency_clicked(s, evt: gr.SelectData):
        return guarded(on_frequency_click)(s, evt.index)

    def suggest(s, text):
        return gr.update(choices=complete_last(s, text), value=None)

    load.click(guarded(on_load), inputs=[state, folder, ext, vocab_files], outputs=outputs)
    apply_filter.click(guarded(on_filter), inputs=[state, query], outputs=outputs)
    query.submit(guarded(on_filter), inputs=[state, query], outputs=outputs)
    gallery.select(gallery_clicked, inputs=[state, select_mode], outputs=outputs)
    frequency.select(frequency_clicked, inputs=[state], outputs=outputs)
    prev_page.click(guarded(lambda s: on_page(s, -1)), inputs=[state], outputs=outputs)
    next_page.click(guarded(lambda s: on_page(s, 1)), inputs=[state], outputs=outputs)
    tags.change(suggest, inputs=[state, tags], outputs=[suggestions])
    suggestions.select(accept_suggestion, inputs=[tags, suggestions], outputs=[tags])
    prev_item.click(guarded(move(-1)), inputs=[state], outputs=outputs)
    next_item.click(guarded(move(1)), inputs=[state], outputs=outputs)
    untagged.click(guarded(on_untagged), inputs=[state], outputs=outputs)
    save.click(guarded(on_save), inputs=[state, caption], outputs=outputs)
    add_start.click(guarded(bulk(lambda d, idx, t: d.add(idx, t, at_start=True))), inputs=[state, scope, tags],
                    outputs=outputs)
    add_end.click(guarded(bulk(lambda d, idx, t: d.add(idx, t))), inputs=[state, scope, tags], outputs=outputs)
    remove.click(guarded(bulk(lambda d, idx, t: d.remove(idx, t))), inputs=[state, scope, tags], outputs=outputs)
    replace.click(guarded(bulk(lambda d, idx, a, b: d.replace(idx, a, b))), inputs=[state, scope, old, new],
                  outputs=outputs)
    regex.click(guarded(bulk(lambda d, idx, p, r: d.regex_replace(idx, p, r))), inputs=[state, scope, pattern, repl],
                outputs=outputs)
    dedupe.click(guarded(bulk(lambda d, idx: d.dedupe(idx))), inputs=[state, scope], outputs=outputs)
    undo.click(guarded(on_undo), inputs=[state], outputs=outputs)
    redo.click(guarded(on_redo), inputs=[state], outputs=outputs)
    return {"dir": folder, "open": (guarded(on_load), [state, folder, ext, vocab_files], outputs)}
