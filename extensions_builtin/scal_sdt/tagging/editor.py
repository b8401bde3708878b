"""The dataset editor's model: every image's tags, a filter, bulk edits on the filtered set or a selection, one
caption edited by hand, undo / redo, tag frequency and autocompletion. Every edit is written at once (atomically)
to the images' caption files, so closing the page loses nothing; undo writes the old captions back."""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..files import atomic_path, atomic_write_text
from ..training.images import image_files
from .query import Caption, parse
from .tags import norm, split_list

THUMB_SIDE = 256


def clip_token_count(text: str) -> int:
    """Tokens the CLIP tokenizer makes of a caption (the WebUI reads prompts in chunks of 75)."""
    from open_clip.tokenizer import _tokenizer

    return len(_tokenizer.encode(text))


SENTENCE_EXTENSION = ".caption"  # where the tagger's captioner keeps each image's sentence (TagConfig's default)


@dataclass
class Item:
    image: Path
    tags: list[str]
    tokens: int = -1  # computed when a filter asks for it
    sentence: str = ""  # the captioner's sentence (NAME.caption beside the image), shown beside the tags

    def caption(self) -> str:
        return ", ".join(self.tags)


@dataclass
class Change:
    what: str
    before: dict[int, list[str]] = field(default_factory=dict)
    after: dict[int, list[str]] = field(default_factory=dict)


class Dataset:
    def __init__(self, folder, caption_extension: str = ".txt", recursive: bool = True):
        self.folder, self.ext = Path(folder), caption_extension
        self.items = []
        for path in image_files(self.folder, recursive):
            caption = path.with_suffix(caption_extension)
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
            sentence = path.with_suffix(SENTENCE_EXTENSION)
            said = sentence.read_text(encoding="utf-8").strip() if (
                caption_extension != SENTENCE_EXTENSION and sentence.is_file()) else ""
            self.items.append(Item(path, split_list(text), sentence=said))
        self.undo_stack: list[Change] = []
        self.redo_stack: list[Change] = []

    def __len__(self) -> int:
        return len(self.items)

    # -- reading ---------------------------------------------------------------------------------------------------
    def _caption(self, item: Item) -> Caption:
        if item.tokens < 0:
            item.tokens = clip_token_count(item.caption())
        return Caption({norm(t) for t in item.tags}, item.tokens)

    def filter(self, query: str) -> list[int]:
        """Indexes of the items the filter matches (see :mod:`.query`)."""
        predicate = parse(query)
        needs_tokens = "tokens" in query.lower()
        out = []
        for i, item in enumerate(self.items):
            cap = self._caption(item) if needs_tokens else Caption({norm(t) for t in item.tags}, 0)
            if predicate(cap):
                out.append(i)
        return out

    def frequency(self, indexes: list[int] | None = None) -> Counter:
        idx = range(len(self.items)) if indexes is None else indexes
        return Counter(t for i in idx for t in dict.fromkeys(self.items[i].tags))

    def first_untagged(self, after: int = -1) -> int | None:
        n = len(self.items)
        for k in range(1, n + 1):
            i = (after + k) % n
            if not self.items[i].tags:
                return i
        return None

    # -- editing ---------------------------------------------------------------------------------------------------
    def _commit(self, what: str, new: dict[int, list[str]]) -> Change:
        change = Change(what)
        for i, tags in new.items():
            if tags != self.items[i].tags:
                change.before[i], change.after[i] = list(self.items[i].tags), list(tags)
        self._write(change.after)
        if change.after:
            self.undo_stack.append(change)
            self.redo_stack.clear()
        return change

    def _write(self, captions: dict[int, list[str]]) -> None:
        for i, tags in captions.items():
            item = self.items[i]
            item.tags, item.tokens = list(tags), -1
            atomic_write_text(item.image.with_suffix(self.ext), ", ".join(tags))

    def set_caption(self, index: int, text: str) -> Change:
        return self._commit("edit caption", {index: split_list(text)})

    def add(self, indexes: list[int], tags: str, at_start: bool = False) -> Change:
        new_tags = split_list(tags)
        out = {}
        for i in indexes:
            have = {norm(t) for t in self.items[i].tags}
            extra = [t for t in new_tags if norm(t) not in have]
            out[i] = extra + self.items[i].tags if at_start else self.items[i].tags + extra
        return self._commit(f"add {tags}", out)

    def remove(self, indexes: list[int], tags: str) -> Change:
        """Remove tags (``*`` wildcards allowed)."""
        patterns = [norm(t) for t in split_list(tags)]
        return self._commit(f"remove {tags}", {i: [t for t in self.items[i].tags
                                                   if not any(fnmatch.fnmatchcase(norm(t), p) for p in patterns)]
                                               for i in indexes})

    def replace(self, indexes: list[int], old: str, new: str) -> Change:
        """Replace the tag ``old`` by ``new`` (empty = remove), keeping its place; no tag twice."""
        key = norm(old)
        out = {}
        for i in indexes:
            tags = [new if norm(t) == key else t for t in self.items[i].tags]
            out[i] = _dedupe([t for t in tags if t])
        return self._commit(f"replace {old} -> {new}", out)

    def regex_replace(self, indexes: list[int], pattern: str, repl: str) -> Change:
        """``re.sub(pattern, repl)`` on every tag; tags that become empty are dropped."""
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{pattern!r} is not a regular expression: {e}") from None
        return self._commit(f"regex {pattern} -> {repl}", {
            i: _dedupe([s for t in self.items[i].tags if (s := rx.sub(repl, t).strip())]) for i in indexes})

    def dedupe(self, indexes: list[int]) -> Change:
        return self._commit("remove duplicate tags", {i: _dedupe(self.items[i].tags) for i in indexes})

    def undo(self) -> Change | None:
        if not self.undo_stack:
            return None
        change = self.undo_stack.pop()
        self._write(change.before)
        self.redo_stack.append(change)
        return change

    def redo(self) -> Change | None:
        if not self.redo_stack:
            return None
        change = self.redo_stack.pop()
        self._write(change.after)
        self.undo_stack.append(change)
        return change


def _dedupe(tags: list[str]) -> list[str]:
    seen, out = set(), []
    for t in tags:
        if norm(t) not in seen:
            seen.add(norm(t))
            out.append(t)
    return out


def thumbnail(image: Path, cache: Path, side: int = THUMB_SIDE) -> Path:
    """A small JPEG of ``image``, made once and kept in ``cache`` (keyed by path, size and time)."""
    st = image.stat()
    key = hashlib.sha1(f"{image.resolve()}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()
    out = Path(cache).expanduser() / key[:2] / f"{key}.jpg"
    if not out.is_file():
        with Image.open(image) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            with atomic_path(out) as tmp:
                im.save(tmp, format="JPEG", quality=85)
    return out


class TagVocabulary:
    """Tags for autocompletion, most used first: the tagcomplete extension's CSV files (``name,type,count,
    "aliases"``), a tagger's selected_tags.csv (``tag_id,name,category,count``) and the dataset's own tags."""

    def __init__(self):
        self.counts: Counter = Counter()

    def add_csv(self, path) -> int:
        n = 0
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if not row or row[0] in ("tag_id", "name"):
                    continue
                if len(row) >= 4 and row[0].isdigit():  # selected_tags.csv
                    name, count = row[1], row[3]
                else:  # tagcomplete: name,type,count,aliases
                    name, count = row[0], row[2] if len(row) > 2 else "0"
                self.counts[name.replace("_", " ")] += int(count) if str(count).isdigit() else 0
                n += 1
        return n

    def add_counts(self, counts: Counter) -> None:
        for tag, n in counts.items():
            self.counts[tag.replace("_", " ")] += n

    def complete(self, prefix: str, n: int = 20) -> list[str]:
        p = norm(prefix)
        if not p:
            return []
        hits = [t for t in self.counts if norm(t).startswith(p)]
        return sorted(hits, key=lambda t: (-self.counts[t], t))[:n]
