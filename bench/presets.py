"""Memory presets: peak memory of a few Textual Inversion (or, with ``--method lora``, LoRA) steps for every tiny
model × preset, against a baseline.

Each (model, preset) trains in a fresh subprocess, as the trainer runs it: the preset applied to a config
(``apply_preset``), its memory mode given to the host (``load_host(..., memory_mode=...)``), then
``train_embedding`` (``train_lora``: a rank-8 LoRA on the UNet's attention and feed-forward layers) for a few steps
on a small built-in data set. Peak memory is measured over the steps only
(after the latents are cached, up to the report of the last step): on CPU the growth of the resident set (the
peak-RSS mark is reset with Linux ``clear_refs`` when the loop begins, as in ``ti_step.py``), on CUDA
``torch.cuda.max_memory_allocated``.

    python bench/presets.py                      # table, compared with bench/presets_baseline.json (exit 1 if worse)
    python bench/presets.py --write-baseline     # measure and write the baseline instead
    python bench/presets.py --model tiny-sdxl --preset 6gb,24gb
    python bench/presets.py --device cuda        # baseline bench/presets_baseline.cuda.json
    python bench/presets.py --method lora        # LoRA; baseline bench/presets_baseline_lora.json
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = {"tiny-sd1": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}  # model -> preset family
NAME = "scalbench"


METHODS = ("ti", "lora")


def baseline_path(device: str, method: str = "ti") -> Path:
    kind = torch.device(device).type
    stem = "presets_baseline" + ("" if method == "ti" else f"_{method}")
    return HERE / (f"{stem}.json" if kind == "cpu" else f"{stem}.{kind}.json")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5; ru_maxrss follows it); return the RSS (MiB) now.

    Free heap memory is handed back to the kernel first (glibc ``malloc_trim``), so what the steps allocate shows
    as growth however much the caching before them happened to leave free in the heap.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss_mb()
    except OSError:  # no reset: fall back to the (monotonic) peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(a, work: Path) -> dict:
    """Child: train ``a.steps`` steps of ``a.model`` under ``a.preset`` in ``work``; measure the steps' peak memory."""
    from scal_sdt.demo_data import make_concept_folder
    from scal_sdt.host.standalone import load_host
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.textual_inversion.trainer import train_embedding
    from scal_sdt.training.presets import apply_preset
    from scal_sdt.training.report import Reporter

    data = make_concept_folder(work / "data", count=a.images, size=a.resolution)
    common = dict(name=NAME, model=a.model, steps=a.steps, resolution=a.resolution, seed=a.seed, save_every=0,
                  preview_every=0, out=str(work / "out"), log_dir=str(work / "run"), device=a.device)
    if a.method == "lora":
        from scal_sdt.lora.config import LoraConfig
        from scal_sdt.lora.trainer import train_lora as train

        cfg = LoraConfig(instance_data=str(data), instance_prompt="a photo of [name], [filewords]", network="lora",
                         rank=8, alpha=8, lr="1e-4", **common)
    else:
        train = train_embedding
        cfg = EmbeddingConfig(data=str(data), lr="0.005", template="subject", **common)
    explicit = {"resolution", "device"}
    if a.precision == "auto":  # the preset's precision on CUDA; on CPU fp32, what the trainer's auto picks there
        a.precision = "preset" if torch.device(a.device).type == "cuda" else "fp32"
    if a.precision != "preset":
        cfg, explicit = dataclasses.replace(cfg, precision=a.precision), explicit | {"precision"}
    cfg = apply_preset(cfg, MODELS[a.model], explicit=explicit, preset=a.preset)
    host = load_host(cfg.model, cfg.device, memory_mode=cfg.memory_mode, precision=cfg.precision)
    device = host.device
    cuda = device.type == "cuda"

    class Measure(Reporter):
        def begin(self, job, total, start=0):
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            self.rss0, self.times, self.peak = reset_peak_rss(), [time.perf_counter()], None

        def step(self, info):
            if cuda:
                torch.cuda.synchronize(device)
            self.times.append(time.perf_counter())
            self.last_loss = info["loss"]
            if info["step"] == a.steps:  # before the final save: the steps only
                self.peak = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb() - self.rss0)

    measure = Measure()
    result = train(cfg, host, measure)
    if result.step != a.steps or measure.peak is None:
        raise RuntimeError(f"the run stopped at step {result.step} of {a.steps}")
    steps = [t1 - t0 for t0, t1 in zip(measure.times, measure.times[1:])]
    return {"peak_mb": measure.peak, "s_per_step": sorted(steps)[len(steps) // 2], "loss": measure.last_loss,
            "options": {k: getattr(cfg, k) for k in ("batch_size", "grad_accum", "precision", "memory_mode",
                                                      "gradient_checkpointing", "offload_vae")}}


def child(a, model: str, preset: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--preset", preset, "--device", a.device]
    cmd += [f"--{k}={getattr(a, k)}" for k in ("method", "resolution", "steps", "images", "seed", "threads",
                                               "precision")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{model} / {preset} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def compare(peak: float, base: float | None, tolerance: float, slack_mb: float) -> str:
    """'' when within the baseline, else why not ('new' when there is none)."""
    if base is None:
        return "new"
    if peak > base * (1 + tolerance) and peak - base > slack_mb:
        return f"WORSE: +{(peak / base - 1) * 100:.0f} % over {base:.1f} MB" if base > 0 else "WORSE"
    return ""


def main() -> int:
    from scal_sdt.training.presets import preset_names

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--preset", default=",".join(preset_names()), help="comma-separated presets")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--method", default="ti", choices=METHODS, help="what trains: Textual Inversion or a LoRA")
    p.add_argument("--precision", default="auto", help="auto (the preset's own on CUDA, fp32 on CPU), preset, or "
                                                       "fp32/fp16/bf16 for every run")
    p.add_argument("--resolution", type=int, default=64, help="training resolution in pixels")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps measured")
    p.add_argument("--images", type=int, default=8, help="images in the data set (the largest preset batch is 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in each run (0: torch's default)")
    p.add_argument("--tolerance", type=float, default=0.25, help="flag a peak this fraction above the baseline")
    p.add_argument("--slack-mb", type=float, default=1.0, help="... and at least this many MB above it (CPU noise)")
    p.add_argument("--baseline", type=Path, help="baseline JSON (default: bench/presets_baseline[.cuda].json)")
    p.add_argument("--write-baseline", action="store_true", help="write the measured peaks as the baseline")
    p.add_argument("--json", metavar="OUT", help="also write every measurement here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        with tempfile.TemporaryDirectory(prefix="scal-bench-presets-") as work:
            print("RESULT " + json.dumps(run_one(a, Path(work))), flush=True)
        return 0

    models = a.model.split(",")
    if unknown := [m for m in models if m not in MODELS]:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    presets = a.preset.split(",")
    if unknown := [n for n in presets if n not in preset_names()]:
        p.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(preset_names())}")
    path = a.baseline or baseline_path(a.device, a.method)
    baseline = json.loads(path.read_text()) if path.is_file() else {}
    kind = "CUDA max allocated" if torch.device(a.device).type == "cuda" else "peak RSS growth"
    print(f"{'LoRA' if a.method == 'lora' else 'TI'} presets, {a.device}, {a.resolution} px, {a.steps} steps, {a.images} images, torch {torch.__version__}, "
          f"{a.threads or torch.get_num_threads()} thread(s); peak = {kind} over the steps (MB)")
    print(f"baseline: {path}{'' if baseline else ' (none yet)'}\n")
    print(f"{'model':<11}{'preset':<7}{'batch':>7}{'prec':>6}{'memory':>9}{'ckpt':>6}{'peak MB':>10}{'base MB':>10}"
          f"{'s/step':>9}  note")
    measured: dict[str, dict[str, float]] = {}
    results, worse = [], 0
    started = time.perf_counter()
    for model in models:
        for preset in presets:
            r = child(a, model, preset)
            o, peak = r["options"], r["peak_mb"]
            base = baseline.get(model, {}).get(preset)
            note = "" if a.write_baseline else compare(peak, base, a.tolerance, a.slack_mb)
            worse += note.startswith("WORSE")
            measured.setdefault(model, {})[preset] = round(peak, 1)
            batch = f"{o['batch_size']}x{o['grad_accum']}"
            print(f"{model:<11}{preset:<7}{batch:>7}{o['precision']:>6}{o['memory_mode']:>9}"
                  f"{'on' if o['gradient_checkpointing'] else 'off':>6}{peak:>10.1f}"
                  f"{'-' if base is None else f'{base:.1f}':>10}{r['s_per_step']:>9.3f}  {note}", flush=True)
            results.append(dict(r, model=model, preset=preset, baseline_mb=base))
    print(f"\n{len(results)} runs in {time.perf_counter() - started:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "results": results},
                                           indent=2))
    if a.write_baseline:
        merged = {m: dict(baseline.get(m, {}), **measured.get(m, {})) for m in {*baseline, *measured}}
        path.write_text(json.dumps({m: merged[m] for m in sorted(merged)}, indent=2) + "\n")
        print(f"wrote {path}")
        return 0
    if worse:
        print(f"{worse} run(s) more than {a.tolerance:.0%} above the baseline: a change raised peak memory")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
