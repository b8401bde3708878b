"""An audit's result: the problems found and what the folder holds, as text, JSON and one picture."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_path
from .checks import PROBLEMS, Finding, Suggestion


@dataclass
class AuditReport:
    folder: str
    method: str
    images: int
    problems: list[Finding] = field(default_factory=list)
    buckets: Counter = field(default_factory=Counter)  # "WxH" -> images
    tags: Counter = field(default_factory=Counter)  # tag -> captions holding it
    rare_tags: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens per caption
    max_tokens: int = 75
    trigger: str = ""
    trigger_from: str = ""  # how the trigger was found: "given", "captions use [name]", ...
    suggestion: Suggestion | None = None
    data_source: str = ""
    files: list[str] = field(default_factory=list)  # the report's own files

    def by_kind(self) -> dict[str, list[Finding]]:
        return {k: [f for f in self.problems if f.kind == k] for k in PROBLEMS if any(f.kind == k for f in self.problems)}

    def summary(self) -> str:
        found = self.by_kind()
        head = (f"{self.folder}: {self.images} image(s), "
                + (f"{sum(len(v) for v in found.values())} problem(s): "
                   + ", ".join(f"{len(v)} {k}" for k, v in found.items()) if found else "no problems found"))
        lines = [head]
        for kind, findings in found.items():
            for f in findings:
                lines.append(f"  {kind}: {' = '.join(f.paths)}" + (f" ({f.detail})" if f.detail else ""))
        if self.trigger:
            lines.append(f"trigger word: {self.trigger} ({self.trigger_from})")
        else:
            lines.append("trigger word: none found (give one to check that every caption holds it)")
        lines.append("aspect buckets: " + ", ".join(f"{b}: {n}" for b, n in sorted(self.buckets.items())))
        if self.tags:
            lines.append("most frequent tags: " + ", ".join(f"{t} ({n})" for t, n in self.tags.most_common(15)))
        if self.rare_tags:
            shown = self.rare_tags[:20]
            lines.append(f"rare tags ({len(self.rare_tags)}): " + ", ".join(shown)
                         + (" …" if len(self.rare_tags) > len(shown) else ""))
        if self.lengths:
            lines.append(f"caption length: up to {max(self.lengths)} tokens (limit {self.max_tokens})")
        if self.suggestion is not None:
            s = self.suggestion
            lines.append(f"suggested for {self.method}: {s.steps} steps"
                         + (f", {s.repeats} repeats (folder {s.repeats}_NAME)" if s.repeats > 1 else "")
                         + f" — {s.reason}")
        if self.data_source:
            lines.append(f"data source / permission: {self.data_source}")
        if self.files:
            lines.append("report: " + ", ".join(self.files))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["buckets"], out["tags"] = dict(self.buckets), dict(self.tags)
        out["problem_counts"] = {k: len(v) for k, v in self.by_kind().items()}
        return out


def draw(report: AuditReport, path: Path) -> Path:
    """One picture: the aspect buckets, the most frequent tags, the caption lengths and the problems by kind."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), dpi=90)
    axes = fig.subplots(2, 2)
    buckets = sorted(report.buckets.items(), key=lambda kv: [int(x) for x in kv[0].split("x")])
    ax = axes[0][0]
    ax.bar([b for b, _ in buckets], [n for _, n in buckets], color="#48a")
    ax.set_title("aspect buckets (images)")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax = axes[0][1]
    top = report.tags.most_common(20)[::-1]
    ax.barh([t[:30] for t, _ in top], [n for _, n in top], color="#6a4")
    ax.set_title("most frequent tags (captions)")
    ax.tick_params(axis="y", labelsize=7)
    ax = axes[1][0]
    if report.lengths:
        ax.hist(report.lengths, bins=min(30, max(5, len(set(report.lengths)))), color="#a86")
    ax.axvline(report.max_tokens, color="#c33", linestyle="--", label=f"{report.max_tokens} tokens")
    ax.set_title("caption length (CLIP tokens)")
    ax.legend(loc="upper right")
    ax = axes[1][1]
    found = report.by_kind()
    kinds = list(PROBLEMS)
    ax.barh(kinds[::-1], [len(found.get(k, [])) for k in kinds[::-1]],
            color=["#c33" if found.get(k) else "#ccc" for k in kinds[::-1]])
    ax.set_title(f"problems ({sum(len(v) for v in found.values())}) in {report.images} image(s)")
    fig.suptitle(f"{Path(report.folder).name}: audit for {report.method}"
                 + (f" — suggested {report.suggestion.steps} steps" if report.suggestion else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
