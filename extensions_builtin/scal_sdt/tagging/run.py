"""Tag a folder: every image gets its caption file, written as it goes.

Reading, hashing and resizing run in worker threads ahead of the model (onnxruntime releases the GIL), the model
runs on full batches, cached scores skip the model, and a stop request ends the run after the current batch with
every caption so far already on disk."""
from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..files import atomic_write_text
from ..training.images import image_files
from ..training.report import Reporter
from .cache import ScoreCache
from .config import DEFAULT_GENERAL, TagConfig
from .model import POOL, Tagger, TaggerPool, known_for
from .clip_terms import ClipTerms, read_terms
from .preprocess import Loaded, load, on_white, prepare
from .captioner import as_entry, with_sentence
from .tags import caption_tags, combine, merge_caption, select


@dataclass
class TagReport:
    folder: str
    models: list[str] = field(default_factory=list)
    provider: str = ""
    images: int = 0
    written: int = 0
    unchanged: int = 0  # caption already as it would be written
    kept: int = 0  # left alone: they had a caption and existing=ignore
    from_cache: int = 0
    inferred: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    frequency: Counter = field(default_factory=Counter)

    @property
    def images_per_second(self) -> float:
        return (self.written + self.unchanged) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        lines = [f"{state}: {self.written} caption(s) written, {self.unchanged} already right, {self.kept} kept "
                 f"(had a caption), {len(self.failed)} failed; {self.inferred} run through the model, "
                 f"{self.from_cache} from the cache; {self.images_per_second:.1f} images/s on {self.provider}"]
        lines += [f"skipped {path}: {why}" for path, why in self.failed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "models": self.models, "provider": self.provider, "images": self.images,
                "written": self.written, "unchanged": self.unchanged, "kept": self.kept,
                "from_cache": self.from_cache, "inferred": self.inferred,
                "failed": [{"path": p, "error": e} for p, e in self.failed], "interrupted": self.interrupted,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
                "frequency": dict(self.frequency.most_common())}


def caption_path(image: Path, ext: str) -> Path:
    return image.with_suffix(ext)


def _existing_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def tag_folder(cfg: TagConfig, reporter: Reporter | None = None, pool: TaggerPool = POOL,
               captioner: Callable[[Image.Image], str] | None = None) -> TagReport:
    """``captioner``: the host's image captioner (the WebUI's BLIP), used when ``cfg.blip``; its ``release()``, if
    it has one, is called at the end."""
    if cfg.captioner:
        from .captioner import Captioner

        captioner = Captioner.load(cfg.captioner, _caption_device(), cfg.caption_tokens, cfg.caption_prompt)
    if cfg.blip and captioner is None:
        raise ValueError("blip: BLIP captions come from the WebUI's interrogator; use the WebUI's Tagger tab or API "
                         "(or clip_model here)")
    try:
        return _tag_folder(cfg, reporter or Reporter(), pool, captioner)
    finally:
        if (cfg.blip or cfg.captioner) and hasattr(captioner, "release"):
            captioner.release()


def _caption_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _tag_folder(cfg: TagConfig, reporter: Reporter, pool: TaggerPool, captioner) -> TagReport:
    t0 = time.time()
    taggers: list[Tagger] = [pool.get(m, cfg.provider, cfg.threads) for m in cfg.models()]
    rules = [cfg.rules(k.general if (k := known_for(t.name)) else DEFAULT_GENERAL) for t in taggers]
    caches = [ScoreCache(cfg.cache_dir or None, t.key, len(t.labels.names)) for t in taggers]
    report = TagReport(str(cfg.dir), [t.describe() for t in taggers], provider=taggers[0].provider)
    for t in taggers:
        reporter.message(f"tagger {t.describe()}")

    files = image_files(cfg.dir, cfg.recursive)
    report.images = len(files)
    todo = []
    for path in files:
        if cfg.existing == "ignore" and _existing_caption(caption_path(path, cfg.caption_extension)):
            report.kept += 1
        else:
            todo.append(path)
    reporter.begin("tag", len(todo))
    specs = [(lambda im, t=t: prepare(im, t.side, t.family.preprocess), c.__contains__)
             for t, c in zip(taggers, caches)]
    clip = None
    if cfg.clip_model:
        clip = ClipTerms(cfg.clip_model, read_terms(cfg.clip_terms), cfg.clip_top)
        specs.append((clip.prepare, lambda digest: False))
        reporter.message(f"CLIP {cfg.clip_model}: the best {cfg.clip_top} of {len(clip.terms)} terms per image")
    if cfg.blip or cfg.captioner:
        specs.append((lambda im: on_white(im).copy(), lambda digest: False))  # the file closes after reading
    if cfg.captioner:
        reporter.message(f"captioner {cfg.captioner} ({captioner.kind}): a sentence per image, {cfg.caption_mode}")
    done = 0

    def finish(item: Loaded, scores: list[np.ndarray], terms: dict[str, float] | None = None,
               sentence: str = "") -> None:
        nonlocal done
        chosen = combine([select(s, t.labels, r) for s, t, r in zip(scores, taggers, rules)], cfg.ensemble)
        tags = with_sentence(caption_tags(chosen, rules[0], extra=list(terms or ())), sentence, cfg.caption_mode)
        if sentence and cfg.sentence_extension:
            atomic_write_text(caption_path(item.path, cfg.sentence_extension), as_entry(sentence))
        target = caption_path(item.path, cfg.caption_extension)
        old = _existing_caption(target)
        text = merge_caption(old, tags, cfg.existing)
        if text != old or not target.exists():
            atomic_write_text(target, text)
            report.written += 1
        else:
            report.unchanged += 1
        report.frequency.update(t.strip() for t in text.split(",") if t.strip())
        done += 1

    def run_batch(batch: list[Loaded]) -> None:
        for m, (tagger, cache) in enumerate(zip(taggers, caches)):
            need = [item for item in batch if item.rows[m] is not None]
            if need:
                scores = tagger.run(np.stack([item.rows[m] for item in need]))
                cache.put([item.digest for item in need], scores)
        n = len(taggers)
        ran = sum(any(r is not None for r in item.rows[:n]) for item in batch)
        report.inferred += ran
        report.from_cache += len(batch) - ran
        terms = clip.best(np.stack([item.rows[n] for item in batch])) if clip else [None] * len(batch)
        if cfg.captioner:  # one batched call
            sentences = captioner.caption([item.rows[-1] for item in batch])
        elif cfg.blip:
            sentences = [captioner(item.rows[-1]).strip() for item in batch]
        else:
            sentences = [""] * len(batch)
        for item, found, sentence in zip(batch, terms, sentences):
            finish(item, [cache.get(item.digest) for cache in caches], found, sentence)
        progress()

    def progress() -> None:
        reporter.step({"step": done, "images_per_second": done / max(time.time() - t0, 1e-9)})

    window = max(cfg.batch_size * 3, cfg.workers * 2)
    pending: deque = deque()
    batch: list[Loaded] = []
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="scal-sdt-tag") as ex:
        queue = iter(todo)

        def fill():
            for path in queue:
                pending.append(ex.submit(load, path, specs))
                if len(pending) >= window:
                    break

        fill()
        while pending:
            item = pending.popleft().result()
            fill()
            if item.error:
                report.failed.append((str(item.path), item.error))
                reporter.message(f"skipped {item.path}: {item.error}")
            elif all(r is None for r in item.rows):
                report.from_cache += 1
                finish(item, [cache.get(item.digest) for cache in caches])
                if done % cfg.batch_size == 0:
                    progress()
            else:
                batch.append(item)
                if len(batch) == cfg.batch_size:
                    run_batch(batch)
                    batch = []
            if reporter.should_stop():
                report.interrupted = True
                for f in pending:
                    f.cancel()
                pending.clear()
                break
        if batch:  # the last, short batch (also when stopping: what was read is tagged, not wasted)
            run_batch(batch)
    report.seconds = time.time() - t0
    reporter.end()
    return report
