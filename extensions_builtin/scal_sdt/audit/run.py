"""`scal-sdt audit DIR`: every check on a data set folder, one report (text, JSON and a picture) written beside the
other audits; no file of the folder is changed."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text
from ..host.tokenizer import clip_tokenizer
from ..training.images import scan_folder
from ..training.report import Reporter
from .checks import (caption_findings, duplicate_findings, infer_trigger, read_findings, suggest, tag_counts,
                     tiny_findings, trigger_findings, bucket_histogram)
from .config import AuditConfig
from .report import AuditReport, draw


def check_out(cfg: AuditConfig) -> None:
    """A ValueError when the report would be written inside the data set folder."""
    root, out = Path(cfg.dir).resolve(), Path(cfg.out).resolve()
    if out == root or root in out.parents:
        raise ValueError(f"out {cfg.out!r} is inside the data set folder: the audit changes nothing there; choose "
                         f"another folder")


def audit_folder(cfg: AuditConfig, reporter: Reporter | None = None, write: bool = True) -> AuditReport:
    """Check ``cfg.dir``; with ``write``, the report goes to ``cfg.out`` as DIRNAME-audit.txt / .json / .png.

    Captions are counted with the CLIP tokenizer every Stable Diffusion family uses (SD1's CLIP-L, SD2's OpenCLIP-H
    and SDXL's two encoders share one BPE vocabulary)."""
    reporter = reporter or Reporter()
    root = Path(cfg.dir)
    out = Path(cfg.out)
    if write:
        check_out(cfg)
    scan = scan_folder(root)
    items = scan.items
    reporter.message(f"checking {len(items)} image(s) in {root}")
    tokenizer = clip_tokenizer()
    lengths = [len(tokenizer.encode(i.caption)) for i in items]
    trigger, trigger_from = (cfg.trigger, "given") if cfg.trigger else infer_trigger([i.caption for i in items])
    problems = read_findings(scan.skipped)
    problems += duplicate_findings(items, cfg.near_distance)
    problems += tiny_findings(items, cfg.min_side or cfg.resolution // 2)
    problems += caption_findings(items, lengths, cfg.max_tokens)
    problems += trigger_findings(items, trigger)
    tags = tag_counts([i.caption for i in items])
    report = AuditReport(
        folder=str(root), method=cfg.method, images=len(items) + len(scan.skipped), problems=problems,
        buckets=bucket_histogram(items, cfg.resolution), tags=tags,
        rare_tags=sorted(t for t, n in tags.items() if n <= cfg.rare_count) if len(items) > cfg.rare_count else [],
        lengths=lengths, max_tokens=cfg.max_tokens, trigger=trigger, trigger_from=trigger_from,
        suggestion=suggest(cfg.method, items, cfg.batch_size) if items else None, data_source=cfg.data_source)
    if write:
        stem = out / f"{root.resolve().name}-audit"
        report.files = [str(stem.with_suffix(s)) for s in (".txt", ".json", ".png")]
        draw(report, stem.with_suffix(".png"))
        atomic_write_text(stem.with_suffix(".json"), json.dumps(report.to_dict(), indent=1))
        atomic_write_text(stem.with_suffix(".txt"), report.summary() + "\n")
    return report
