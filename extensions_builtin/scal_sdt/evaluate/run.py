"""`scal-sdt evaluate RUN_DIR`: the run's saved steps side by side. Every step (at every strength) draws the same
prompts with the same seeds through the host's own sampler (the WebUI's txt2img inside it); the pictures become a
labelled grid, the scores per step (validation loss, fidelity, prompt match, leakage) a plot, and the best balance
of them the suggested step. ``keep`` copies a step to the result's name."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..aesthetic.gradient import AestheticSettings
from ..aesthetic.use import find_embedding, sampling_keywords
from ..files import atomic_path, atomic_write_text
from ..host.base import Host
from ..training.images import load_image, scan_folder
from ..training.run_log import RunLog
from ..training.run_setup import read_run_record
from ..training.templates import load_template, render
from .apply import STRENGTHS, step_applied
from .config import EvaluateConfig, number_list
from .grid import labelled_grid, scores_plot, write_page
from .scores import ClipScorer, family_clip, fidelity, leakage, prompt_match
from .steps import SavedStep, result_path, saved_steps
from .suggest import suggest

BATCH = 8  # pictures per sampler call
TRAINING_IMAGES = 64  # at most this many training images for fidelity


@dataclass
class Evaluation:
    rows: list[dict]  # per saved step: step, val_loss, fidelity, prompt, leakage (None where not measured)
    suggested: int
    reason: str
    files: dict[str, Path] = field(default_factory=dict)  # grid, plot, page, scores
    kept: Path | None = None
    notes: list[str] = field(default_factory=list)  # scores not measured, and why

    def summary(self) -> str:
        lines = [f"{len(self.rows)} saved step(s): suggested step {self.suggested} — {self.reason}"]
        for r in self.rows:
            lines.append(f"  step {r['step']}: " + ", ".join(f"{k} {r[k]:.4f}" for k in ("val_loss", "fidelity",
                                                                                      "prompt", "leakage")
                                                           if r.get(k) is not None))
        lines.append("grid " + str(self.files["grid"]) + ", page " + str(self.files["page"]))
        if self.kept:
            lines.append(f"kept: {self.kept}")
        return "\n".join(lines)


def _without(prompt: str, name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", "", prompt)).replace(" ,", ",").strip()


def _data_folder(tcfg: dict, run_dir: Path) -> Path | None:
    data = tcfg.get("instance_data") or tcfg.get("data") or ""
    if data == "demo":
        return run_dir / "demo-data"
    return Path(data) if data and Path(data).is_dir() else None


def grid_prompts(cfg: EvaluateConfig, method: str, tcfg: dict, run_dir: Path) -> list[str]:
    """The user's prompts, else the run's preview prompts, else its first prompt as the run's previews make it."""
    name = tcfg["name"]
    given = cfg.prompts or tcfg.get("preview_prompt", "")
    prompts = [p.strip().replace("[name]", name) for p in given.split("|") if p.strip()]
    if prompts:
        return prompts
    folder = _data_folder(tcfg, run_dir)
    caption = scan_folder(folder).items[0].caption if folder else ""
    if method in ("dreambooth", "lora"):
        line = tcfg.get("instance_prompt") or "[filewords]"
    else:
        line = load_template(tcfg.get("template") or "subject")[0]
    return [render(line, name, caption).replace("[name]", name)]


def class_prompts(cfg: EvaluateConfig, tcfg: dict, prompts: list[str]) -> list[str]:
    given = cfg.class_prompt or ("" if "[filewords]" in tcfg.get("class_prompt", "") else tcfg.get("class_prompt", ""))
    return [given] if given else [_without(p, tcfg["name"]) for p in prompts]


def _sample(host: Host, prompts: list[str], cfg: EvaluateConfig, size: int, embeddings: dict,
            extra: dict | None = None) -> list[Image.Image]:
    """Each prompt with seeds seed.. (picture i of the whole list with seed + i, batch by batch), as every step.
    ``extra``: more keywords for ``host.sample`` (an aesthetic embedding's)."""
    wanted = [p for p in prompts for _ in range(cfg.images)]
    out = []
    for i in range(0, len(wanted), BATCH):
        out += host.sample(wanted[i:i + BATCH], steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed + i,
                           width=size, height=size, embeddings=embeddings or None, **(extra or {}))
    return out


def _val_loss(run_dir: Path, step: int) -> float | None:
    """The validation loss logged at ``step`` or the last one before it."""
    rows = RunLog(run_dir, resume_from=step, report=lambda _: None).rows
    logged = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    return logged[-1] if logged else None


def evaluate_run(cfg: EvaluateConfig, host: Host | None = None, say: Callable[[str], None] = print,
                 load_model: Callable[[Path], Host] | None = None) -> Evaluation:
    """Compare the saved steps of ``cfg.run_dir`` on ``host`` (None: the run's model loaded here); ``load_model``
    loads a DreamBooth step's checkpoint (default: a standalone host on the same device); an aesthetic embedding is
    applied the host's way (the WebUI's as txt2img's accordion, else our text-encoder tuning)."""
    run_dir = Path(cfg.run_dir)
    record = read_run_record(run_dir)
    method, tcfg = record["method"], record["config"]
    name = tcfg["name"]
    steps = saved_steps(run_dir, method, tcfg)
    if cfg.steps:
        wanted = {int(s) for s in number_list(cfg.steps, "steps")}
        steps = [s for s in steps if s.step in wanted]
    if not steps:
        raise ValueError(f"{run_dir}: no saved steps to compare (train with save_every N; the run saves its steps "
                         f"into {run_dir}/…)")
    if host is None or load_model is None:  # diffusers, which a WebUI (which gives both) may not have
        from ..host.standalone import load_host

        host = host or load_host(cfg.model or tcfg["model"], cfg.device, cfg.memory_mode)
        load_model = load_model or (lambda path: load_host(str(path), str(host.device), cfg.memory_mode))
    size = cfg.size or int(record.get("resolution") or host.native_resolution)
    prompts = grid_prompts(cfg, method, tcfg, run_dir)
    neutral = class_prompts(cfg, tcfg, prompts)
    strengths = number_list(cfg.strengths, "strengths") if method in STRENGTHS else [1.0]
    scored = min(strengths, key=lambda s: abs(s - 1.0))  # the strength the scores are measured at
    look = find_embedding(cfg.aesthetic, cfg.aesthetic_dir) if cfg.aesthetic else None
    weights = number_list(cfg.aesthetic_weights, "aesthetic_weights") if look else [0.0]
    plain = min(weights)  # ... and the aesthetic weight
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        say(text)

    scorer, training = _scorer(cfg, record, tcfg, run_dir, note)
    unnamed = list(dict.fromkeys(_without(p, name) for p in prompts))  # the grid's different prompts, name left out
    own = [unnamed.index(_without(p, name)) for p in prompts for _ in range(cfg.images)]
    texts = scorer.texts(unnamed) if scorer else None
    if scorer and len(unnamed) < 2:
        note("prompt match skipped: it compares the grid's prompts with each other — give two or more")
    base = scorer.images(_sample(host, neutral, cfg, size, {})) if scorer else None
    say(f"evaluating {len(steps)} saved step(s) x {len(strengths)} strength(s) x "
        + (f"{len(weights)} aesthetic weight(s) x " if look else "")
        + f"{len(prompts)} prompt(s) x {cfg.images} seed(s)")
    grid_rows, rows = [], []
    for saved in steps:
        row = {"step": saved.step, "val_loss": _val_loss(run_dir, saved.step), "fidelity": None, "prompt": None,
               "leakage": None}
        for strength in strengths:
            with step_applied(method, saved, host, name, strength, load_model) as (model, embeddings):
                for weight in weights:
                    settings = AestheticSettings(weight, cfg.aesthetic_steps, cfg.aesthetic_lr)
                    nudged = sampling_keywords(model, look, settings) if look else None
                    pictures = _sample(model, prompts, cfg, size, embeddings, nudged)
                    if scorer and strength == scored and weight == plain:
                        shown = scorer.images(pictures)
                        row["fidelity"] = fidelity(shown, training) if training is not None else None
                        row["prompt"] = prompt_match(shown, texts, own, scorer.logit_scale)
                        row["leakage"] = leakage(scorer.images(_sample(model, neutral, cfg, size, embeddings)), base)
                    label = f"step {saved.step}" + (" (final)" if saved.final else "")
                    label += f"\nstrength {strength:g}" if method in STRENGTHS else ""
                    grid_rows.append((label + (f"\naesthetic {weight:g}" if look else ""), pictures))
        rows.append(row)
        say(f"step {saved.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "step" and v is not None))
    suggested, reason = suggest(rows)
    out = Path(cfg.out) if cfg.out else run_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    columns = [f"{p} (seed {cfg.seed + i * cfg.images + k})" for i, p in enumerate(prompts) for k in range(cfg.images)]
    marked = next(i for i, (label, _) in enumerate(grid_rows) if label.startswith(f"step {suggested}"))
    files = {"grid": out / "grid.png", "plot": out / "scores.png", "page": out / "index.html",
             "scores": out / "scores.json"}
    with atomic_path(files["grid"]) as tmp:
        labelled_grid(grid_rows, columns, marked).save(tmp, format="PNG")
    scores_plot(rows, suggested, files["plot"])
    write_page(files["page"], f"{name}: saved steps compared", rows, suggested, reason, "grid.png", "scores.png")
    atomic_write_text(files["scores"], json.dumps({"method": method, "name": name, "rows": rows,
                                                   "suggested": suggested, "reason": reason, "prompts": prompts,
                                                   "class_prompts": neutral, "strengths": strengths,
                                                   "aesthetic": look.stem if look else None,
                                                   "aesthetic_weights": weights if look else []}, indent=1))
    result = Evaluation(rows, suggested, reason, files, notes=notes)
    say(f"suggested step {suggested}: {reason}")
    if cfg.keep:
        step = suggested if cfg.keep == "suggested" else int(cfg.keep)
        result.kept = keep_step(run_dir, step)
        say(f"kept step {step} as {result.kept}")
    return result


def _scorer(cfg: EvaluateConfig, record: dict, tcfg: dict, run_dir: Path, say):
    """The CLIP scorer and the training images' embeddings (None, None when no CLIP is to be had)."""
    if cfg.clip == "none":
        return None, None
    spec = cfg.clip or family_clip(record.get("family", "sd1"), tcfg.get("model", ""))
    try:
        scorer = ClipScorer(spec, "cpu")
    except (FileNotFoundError, ValueError) as e:
        say(f"fidelity, prompt match and leakage skipped: {e}")
        return None, None
    folder = _data_folder(tcfg, run_dir)
    items = scan_folder(folder).items[:TRAINING_IMAGES] if folder else []
    training = scorer.images([load_image(i.path)[0] for i in items]) if items else None
    if training is None:
        say("fidelity skipped: the run's training images are not at hand")
    return scorer, training


def keep_step(run_dir: Path, step: int) -> Path:
    """Copy saved ``step`` of the run to the result's name (the file the run ended with is replaced; for a
    DreamBooth checkpoint its .yaml and .json and its pivotal embedding too)."""
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    method, tcfg = record["method"], record["config"]
    saved: SavedStep | None = next((s for s in saved_steps(run_dir, method, tcfg) if s.step == step), None)
    if saved is None:
        raise ValueError(f"step {step} is not a saved step of {run_dir} "
                         f"(saved: {', '.join(str(s.step) for s in saved_steps(run_dir, method, tcfg)) or 'none'})")
    target = result_path(method, tcfg)
    if saved.final:
        return target
    pairs = [(saved.path, target)]
    if method == "dreambooth":
        pairs += [(saved.path.with_suffix(s), target.with_suffix(s)) for s in (".yaml", ".json")
                  if saved.path.with_suffix(s).is_file()]
        if saved.embedding is not None and tcfg.get("pivotal_vectors"):
            pairs.append((saved.embedding, Path(tcfg["embeddings_out"]) / f"{tcfg['name']}.safetensors"))
    for src, dst in pairs:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return target
