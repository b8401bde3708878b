"""The WebUI's own Textual Inversion and hypernetwork trainers against ours, in one running AUTOMATIC1111 WebUI.

built-in   POST /sdapi/v1/create/embedding + /sdapi/v1/train/embedding (and .../hypernetwork): the WebUI's trainers.
webui      POST /scal-sdt/v1/train/embedding (and .../hypernetwork): ours, on the same loaded model, same process.
cli        ``scal-sdt train-embedding`` (and ``train-hypernetwork``) on the same checkpoint file, in our python.

All sides: the same tiny SD1 checkpoint (written by our ``save_checkpoint``), the same images and captions, the same
template (style_filewords for TI, hypernetwork for hypernetworks), steps, learning rate, batch 1, resolution, seed;
TI with 2 vectors from "*", hypernetworks with layer structure 1, 2, 1, relu, Normal init, on the same widths.
Seconds per step: each WebUI side trains a fresh name for ``--warmup`` steps and another for ``--warmup + --steps``
steps; the difference of their wall times over ``--steps`` is the time per step with set-up and HTTP cancelled out
(the built-in trainer resumes from an embedding's stored step, so every run has its own name). The CLI's is read off
its run log (``loss.csv``'s seconds). Peak memory: the WebUI process's peak RSS during a side's two runs above its RSS before
(Linux ``/proc/PID/clear_refs`` resets the peak), and what it still holds afterwards, after one untimed run of each
side (the first training in a process grows its heap whoever runs it); the CLI's is its whole process'
peak RSS. Sides take turns within each repeat (the CPU may be shared); medians over ``--repeats`` are reported, and
the ratios ours / built-in.

The built-in trainers need ``--disable-safe-unpickle`` with a modern torch (the WebUI cannot reload its own new .pt
files otherwise; it is passed here) and, on torch >= 2.2, A1111's one-line GroupedBatchSampler fix in
``modules/textual_inversion/dataset.py`` (``super().__init__(data_source)`` -> ``super().__init__()``): without it
their rows say why they failed and ours are still measured.

    WEBUI_DIR=/work/hosts/a1111 WEBUI_PYTHON=/work/hosts/a1111-venv/bin/python \\
        PYTHONPATH=$PWD/extensions_builtin python bench/peers.py --threads 1 --json peers.json
    ... python bench/peers.py --quick          # runs of 2 and 5 steps, one repeat: a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.webui.conftest: the WebUI launcher the tests use
TI_LR, HN_LR = "0.005", "0.0005"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Peers:
    def __init__(self, args, server, ckpt: Path, data: Path, work: Path):
        self.args, self.server, self.ckpt, self.data, self.work = args, server, ckpt, data, work
        self.pid = server.process.pid
        self.count = 0
        self.widths = [32, 64]  # the tiny SD1: cross-attention context 32, self-attention 32 and 64 channels

    def fresh(self, side: str, kind: str) -> str:
        self.count += 1
        return f"peer{kind}{side.replace('-', '')}{os.getpid()}x{self.count}"

    def builtin(self, kind: str, steps: int) -> float:
        s, a = self.server, self.args
        name = self.fresh("builtin", kind)
        common = dict(id_task=name, learn_rate=TI_LR if kind == "ti" else HN_LR, batch_size=1, gradient_step=1,
                      data_root=str(self.data), log_directory=str(self.work / "builtin-logs"),
                      training_width=a.resolution, training_height=a.resolution, varsize=False, steps=steps,
                      clip_grad_mode="disabled", clip_grad_value=0.1, shuffle_tags=False, tag_drop_out=0.0,
                      latent_sampling_method="once", use_weight=False, create_image_every=0,
                      preview_from_txt2img=False, preview_prompt="", preview_negative_prompt="", preview_steps=20,
                      preview_sampler_name="Euler", preview_cfg_scale=7.0, preview_seed=a.seed,
                      preview_width=a.resolution, preview_height=a.resolution)
        for folder in ("embeddings", "models/hypernetworks"):  # a fresh data folder has neither
            (s.data_dir / folder).mkdir(parents=True, exist_ok=True)
        if kind == "ti":
            s.post("/sdapi/v1/create/embedding", {"name": name, "num_vectors_per_token": 2, "overwrite_old": True,
                                                   "init_text": "*"})
            body = dict(common, embedding_name=name, save_embedding_every=0, template_filename="style_filewords.txt",
                        save_image_with_stored_embedding=False)
            path = "/sdapi/v1/train/embedding"
        else:
            s.post("/sdapi/v1/create/hypernetwork", {
                "name": name, "enable_sizes": self.widths, "overwrite_old": True, "layer_structure": [1, 2, 1],
                "activation_func": "relu", "weight_init": "Normal", "add_layer_norm": False, "use_dropout": False,
                "dropout_structure": [0, 0, 0]})
            body = dict(common, hypernetwork_name=name, save_hypernetwork_every=0, template_filename="hypernetwork.txt")
            path = "/sdapi/v1/train/hypernetwork"
        # the WebUI writes its run settings there before training, but creates the folder only when it saves
        # something during the run
        (Path(common["log_directory"]) / datetime.datetime.now().strftime("%Y-%m-%d") / name).mkdir(parents=True,
                                                                                                   exist_ok=True)
        t = time.perf_counter()
        info = s.post(path, body, timeout=3600).get("info", "")
        took = time.perf_counter() - t
        if "error: None" not in info:
            raise RuntimeError(f"the WebUI's trainer failed: {info}")
        return took

    def ours(self, kind: str, steps: int) -> float:
        body = self.ours_options(kind, steps)
        t = time.perf_counter()
        job = self.server.post(f"/scal-sdt/v1/train/{'embedding' if kind == 'ti' else 'hypernetwork'}", body)
        job = self.server.wait_job(job, timeout=3600)
        if job["status"] != "finished":
            raise RuntimeError(f"our job failed: {job.get('error')}")
        return job["finished"] - job["started"] if job.get("finished") and job.get("started") else \
            time.perf_counter() - t

    def ours_options(self, kind: str, steps: int, side: str = "webui") -> dict:
        a = self.args
        body = dict(name=self.fresh(side, kind), data=str(self.data), steps=steps, resolution=a.resolution,
                    batch_size=1, seed=a.seed, save_every=0, preview_every=0)
        if kind == "ti":
            body.update(lr=TI_LR, vectors=2, init_text="*", template="style_filewords")
        else:
            body.update(lr=HN_LR, layer_structure="1, 2, 1", activation="relu", weight_init="Normal",
                        sizes=", ".join(map(str, self.widths)), template="hypernetwork")
        return body

    def measure_webui(self, side: str, kind: str) -> dict:
        """(s/step by the difference of two runs, peak MB above the RSS before, MB still held after)."""
        run = self.builtin if side == "built-in" else self.ours
        a = self.args
        before = rss_mb(self.pid)
        exact = reset_peak(self.pid)
        short = run(kind, a.warmup)
        long = run(kind, a.warmup + a.steps)
        peak = rss_mb(self.pid, "VmHWM") if exact else float("nan")
        return {"s_step": (long - short) / a.steps, "peak_mb": peak - before, "held_mb": rss_mb(self.pid) - before}

    def measure_cli(self, kind: str) -> dict:
        a = self.args
        opts = self.ours_options(kind, a.warmup + a.steps, side="cli")
        log_dir = self.work / "cli" / opts["name"]
        cmd = ["train-embedding" if kind == "ti" else "train-hypernetwork", "--model", str(self.ckpt),
               "--out", str(self.work / "cli-out"), "--log-dir", str(log_dir), "--device", "cpu"]
        for k, v in opts.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        code = ("import resource, sys\nfrom scal_sdt.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
                "    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")
        env = {**os.environ, "PYTHONPATH": str(REPO / "extensions_builtin")}
        if a.threads:
            env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
        out = subprocess.run([sys.executable, "-c", code, *cmd], env=env, capture_output=True, text=True,
                             timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"scal-sdt {cmd[0]} failed: {out.stderr[-1500:]}")
        peak = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK_KB")][-1] / 1024
        import csv

        with open(log_dir / "loss.csv", newline="") as f:
            seconds = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
        last = a.warmup + a.steps
        return {"s_step": (seconds[last] - seconds[a.warmup]) / a.steps, "peak_mb": peak, "held_mb": float("nan")}


def median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) == r.get(key)]  # NaN-free
    return statistics.median(values) if values else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webui-dir", default=os.environ.get("WEBUI_DIR"))
    ap.add_argument("--webui-python", default=os.environ.get("WEBUI_PYTHON"))
    ap.add_argument("--kinds", default="ti,hn", help="ti, hn or both")
    ap.add_argument("--sides", default="built-in,webui,cli")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (the long run trains warmup + steps)")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP/MKL threads for the WebUI and the CLI (0: torch's default); on a shared CPU 1 is steadier")
    ap.add_argument("--quick", action="store_true", help="runs of 2 and 5 steps, one repeat (a smoke run)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.warmup, a.repeats = 3, 2, 1
    if not a.webui_dir or not a.webui_python:
        ap.error("--webui-dir and --webui-python (or WEBUI_DIR and WEBUI_PYTHON) are needed")
    from scal_sdt.demo_data import make_concept_folder
    from scal_sdt.host.checkpoint import save_checkpoint
    from scal_sdt.host.standalone import load_components
    from tests.webui.conftest import start_webui

    kinds = [k for k in a.kinds.split(",") if k]
    sides = [s for s in a.sides.split(",") if s]
    results: dict = {"args": vars(a), "rows": {}}
    with tempfile.TemporaryDirectory(prefix="scal-peers-") as tmp:
        work = Path(tmp)
        models = work / "models"
        models.mkdir()
        ckpt = save_checkpoint(load_components("tiny-sd1"), models / "tiny-sd1.safetensors")
        data = make_concept_folder(work / "data" / "stars", count=4)
        env = {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)} if a.threads else {}
        server = start_webui(Path(a.webui_dir), Path(a.webui_python), work / "webui", models, ckpt,
                             extra_args=["--disable-safe-unpickle"], extensions=[REPO], env=env)
        try:
            peers = Peers(a, server, ckpt, data, work)
            for kind in kinds:
                rows: dict[str, list] = {s: [] for s in sides}
                errors: dict[str, str] = {}
                for side in sides:  # untimed: the process's first run of each side grows its heap once
                    if side != "cli":
                        try:
                            (peers.builtin if side == "built-in" else peers.ours)(kind, a.warmup)
                        except Exception as e:  # noqa: BLE001
                            errors[side] = f"{type(e).__name__}: {str(e)[:400]}"
                for rep in range(a.repeats):
                    order = sides if rep % 2 == 0 else sides[::-1]  # take turns: a busy spell hits both
                    for side in order:
                        if side in errors:
                            continue
                        try:
                            m = peers.measure_cli(kind) if side == "cli" else peers.measure_webui(side, kind)
                        except Exception as e:  # noqa: BLE001 - a peer that cannot run is a row saying why
                            errors[side] = f"{type(e).__name__}: {str(e)[:400]}"
                            continue
                        rows[side].append(m)
                        print(f"[{kind} {rep + 1}/{a.repeats}] {side}: {m['s_step']:.4f} s/step, peak +"
                              f"{m['peak_mb']:.0f} MB, held +{m['held_mb']:.0f} MB", flush=True)
                summary = {}
                for side in sides:
                    if side in errors:
                        summary[side] = {"error": errors[side]}
                        continue
                    summary[side] = {k: median(rows[side], k) for k in ("s_step", "peak_mb", "held_mb")}
                    summary[side]["runs"] = rows[side]
                base = summary.get("built-in", {})
                for side in sides:
                    if side != "built-in" and "s_step" in summary[side] and "s_step" in base:
                        summary[side]["time_ratio"] = summary[side]["s_step"] / base["s_step"]
                        if side == "webui":
                            summary[side]["peak_ratio"] = summary[side]["peak_mb"] / max(base["peak_mb"], 1e-9)
                            summary[side]["held_ratio"] = summary[side]["held_mb"] / max(base["held_mb"], 1e-9)
                results["rows"][kind] = summary
        finally:
            server.stop()
    print_table(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict) -> None:
    print("\n| trainer | side | s/step | ours / built-in | peak MB above idle | held after |")
    print("|---|---|---|---|---|---|")
    for kind, summary in results["rows"].items():
        for side, r in summary.items():
            if "error" in r:
                print(f"| {kind} | {side} | failed: {r['error'][:120]} | | | |")
                continue
            ratio = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "1.00" if side == "built-in" else ""
            print(f"| {kind} | {side} | {r['s_step']:.3f} | {ratio} | {r['peak_mb']:.0f} | {r['held_mb']:.0f} |")


if __name__ == "__main__":
    main()
