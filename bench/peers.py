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

``--quality``: what each side learns, on the toy world's trained checkpoint (``toy``, written by ``save_checkpoint``)
instead of the speed rows. Every side trains once with the same data, captions, template ("[filewords]" alone: a
``filewords.txt`` is added to the WebUI's templates), steps, rate and batch, and the toy judge scores the results in
this process on our standalone host (the same sampler and seeds for every side's file):
TI     16 pictures of the held-out colour (pink) captioned with [name] where the colour goes; 1 vector from "red",
       lr 0.02, batch 8, 400 steps (tests/test_toy_personalisation.py's run); the judge's accuracy on the colour of
       32 "a large NAME SHAPE on a ... background" pictures (chance 1/12; the init vector's is the "before" row).
HN     24 pictures on a checkered background whose captions do not say so (tests/test_hypernetwork.py's style);
       layer structure 1, 2, 1, linear, Normal init, lr 0.001, batch 4, 150 steps; the diffusion loss of 8 held-out
       pictures of the style at fixed timesteps and noises (``heldout_loss``; no hypernetwork: the "before" row).
``--runs N``: each side trains N times (ours with seeds --seed, --seed + 1, ...; the WebUI's trainers take no seed);
each row is the mean of its runs with their spread (sample standard deviation), every run kept in the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.webui.conftest: the WebUI launcher the tests use
sys.path.insert(0, str(REPO / "bench"))  # common
from common import HeldOutColourJudge, add_report_args, table, use_threads, write_json, write_model  # noqa: E402
TI_LR, HN_LR = "0.005", "0.0005"
#: --quality: the settings every side trains with (see the module's docstring)
QUALITY = {"ti": dict(vectors=1, init_text="red", lr="0.02", batch_size=8, steps=400, template="filewords"),
           "hn": dict(layer_structure=[1, 2, 1], activation="linear", weight_init="Normal", lr="0.001", batch_size=4,
                      steps=150, template="filewords")}


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
    def __init__(self, args, server, ckpt: Path, data: Path, work: Path, env: dict | None = None):
        self.args, self.server, self.ckpt, self.work, self.env = args, server, ckpt, work, env or {}
        self.data_sets = data if isinstance(data, dict) else {"ti": data, "hn": data}
        self.data = self.data_sets["ti"]
        self.pid = server.process.pid
        self.count = 0
        self.widths = [32, 64]  # the tiny SD1: cross-attention context 32, self-attention 32 and 64 channels
        self.files: dict[str, Path] = {}  # run name -> the file it wrote
        self.last = ""  # the name of the last WebUI-side run

    def fresh(self, side: str, kind: str) -> str:
        self.count += 1
        return f"peer{kind}{side.replace('-', '')}{os.getpid()}x{self.count}"

    def builtin(self, kind: str, steps: int, quality: dict | None = None) -> float:
        """The WebUI's trainer on a fresh name (``quality``: the --quality settings, else the speed rows'); its
        wall seconds. The file is ``self.files[name]``."""
        s, a = self.server, self.args
        q = quality or {}
        name = self.fresh("builtin", kind)
        common = dict(id_task=name, learn_rate=q.get("lr", TI_LR if kind == "ti" else HN_LR),
                      batch_size=q.get("batch_size", 1), gradient_step=1,
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
            s.post("/sdapi/v1/create/embedding", {"name": name, "num_vectors_per_token": q.get("vectors", 2),
                                                   "overwrite_old": True, "init_text": q.get("init_text", "*")})
            body = dict(common, embedding_name=name, save_embedding_every=0,
                        template_filename=q.get("template", "style_filewords") + ".txt",
                        save_image_with_stored_embedding=False)
            path = "/sdapi/v1/train/embedding"
            self.files[name] = s.data_dir / "embeddings" / f"{name}.pt"
        else:
            s.post("/sdapi/v1/create/hypernetwork", {
                "name": name, "enable_sizes": self.widths, "overwrite_old": True,
                "layer_structure": q.get("layer_structure", [1, 2, 1]), "activation_func": q.get("activation", "relu"),
                "weight_init": q.get("weight_init", "Normal"), "add_layer_norm": False, "use_dropout": False,
                "dropout_structure": [0, 0, 0]})
            body = dict(common, hypernetwork_name=name, save_hypernetwork_every=0,
                        template_filename=q.get("template", "hypernetwork") + ".txt")
            path = "/sdapi/v1/train/hypernetwork"
            self.files[name] = s.data_dir / "models" / "hypernetworks" / f"{name}.pt"
        # the WebUI writes its run settings there before training, but creates the folder only when it saves
        # something during the run
        (Path(common["log_directory"]) / datetime.datetime.now().strftime("%Y-%m-%d") / name).mkdir(parents=True,
                                                                                                   exist_ok=True)
        t = time.perf_counter()
        info = s.post(path, body, timeout=3600).get("info", "")
        took = time.perf_counter() - t
        if "error: None" not in info:
            raise RuntimeError(f"the WebUI's trainer failed: {info}")
        self.last = name
        return took

    def ours(self, kind: str, steps: int, quality: dict | None = None) -> float:
        body = self.ours_options(kind, steps, quality=quality)
        t = time.perf_counter()
        job = self.server.post(f"/scal-sdt/v1/train/{'embedding' if kind == 'ti' else 'hypernetwork'}", body)
        job = self.server.wait_job(job, timeout=3600)
        if job["status"] != "finished":
            raise RuntimeError(f"our job failed: {job.get('error')}")
        self.files[body["name"]] = Path(job["result"]["path"])
        self.last = body["name"]
        return job["finished"] - job["started"] if job.get("finished") and job.get("started") else \
            time.perf_counter() - t

    def ours_options(self, kind: str, steps: int, side: str = "webui", quality: dict | None = None) -> dict:
        a = self.args
        q = quality or {}
        body = dict(name=self.fresh(side, kind), data=str(self.data), steps=steps, resolution=a.resolution,
                    batch_size=q.get("batch_size", 1), seed=a.seed, save_every=0, preview_every=0)
        if kind == "ti":
            body.update(lr=q.get("lr", TI_LR), vectors=q.get("vectors", 2), init_text=q.get("init_text", "*"),
                        template=q.get("template", "style_filewords"))
        else:
            body.update(lr=q.get("lr", HN_LR), layer_structure=", ".join(map(str, q.get("layer_structure", [1, 2, 1]))),
                        activation=q.get("activation", "relu"), weight_init=q.get("weight_init", "Normal"),
                        sizes=", ".join(map(str, self.widths)), template=q.get("template", "hypernetwork"))
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

    def cli(self, kind: str, steps: int, quality: dict | None = None) -> tuple[Path, float]:
        """Our command line on the same checkpoint file: (its run log folder, its peak RSS in MB); the file it wrote
        is ``self.files[name]``."""
        opts = self.ours_options(kind, steps, side="cli", quality=quality)
        log_dir = self.work / "cli" / opts["name"]
        cmd = ["train-embedding" if kind == "ti" else "train-hypernetwork", "--model", str(self.ckpt),
               "--out", str(self.work / "cli-out"), "--log-dir", str(log_dir), "--device", "cpu"]
        for k, v in opts.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        code = ("import resource, sys\nfrom scal_sdt.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
                "    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")
        env = {**os.environ, "PYTHONPATH": str(REPO / "extensions_builtin"), **self.env}
        out = subprocess.run([sys.executable, "-c", code, *cmd], env=env, capture_output=True, text=True,
                             timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"scal-sdt {cmd[0]} failed: {out.stderr[-1500:]}")
        peak = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK_KB")][-1] / 1024
        self.files[opts["name"]] = self.work / "cli-out" / (opts["name"] + (".safetensors" if kind == "ti" else ".pt"))
        self.last = opts["name"]
        return log_dir, peak

    def measure_cli(self, kind: str) -> dict:
        import csv

        a = self.args
        log_dir, peak = self.cli(kind, a.warmup + a.steps)
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
    ap.add_argument("--quick", action="store_true", help="runs of 2 and 5 steps, one repeat (a smoke run)")
    ap.add_argument("--quality", action="store_true",
                    help="train once per side on the toy checkpoint and judge the results instead of timing steps")
    ap.add_argument("--runs", type=int, default=1,
                    help="--quality: trainings per side (ours with seeds --seed, --seed + 1, ...; the WebUI's trainer "
                         "takes no seed, each run draws its own); each row is the mean, with the spread")
    add_report_args(ap)
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.warmup, a.repeats = 3, 2, 1
    if not a.webui_dir or not a.webui_python:
        ap.error("--webui-dir and --webui-python (or WEBUI_DIR and WEBUI_PYTHON) are needed")
    env = use_threads(a.threads)  # the WebUI's, the CLI's and the judging's
    from scal_sdt.demo_data import make_concept_folder
    from scal_sdt.toy_world.concepts import make_held_out_colour_set, make_unnamed_style_set
    from tests.webui.conftest import start_webui

    kinds = [k for k in a.kinds.split(",") if k]
    sides = [s for s in a.sides.split(",") if s]
    results: dict = {"args": vars(a), "rows": {}}
    with tempfile.TemporaryDirectory(prefix="scal-peers-") as tmp:
        work = Path(tmp)
        models = work / "models"
        ckpt = write_model("toy" if a.quality else "tiny-sd1", models)
        if a.quality:
            data = {"ti": work / "data" / "pink", "hn": work / "data" / "checks", "held": work / "data" / "held"}
            make_held_out_colour_set(data["ti"], 16, seed=5)
            make_unnamed_style_set(data["hn"], 24, seed=1)
            make_unnamed_style_set(data["held"], 8, seed=2)
        else:
            data = make_concept_folder(work / "data" / "stars", count=4)
        server = start_webui(Path(a.webui_dir), Path(a.webui_python), work / "webui", models, ckpt,
                             extra_args=["--disable-safe-unpickle", "--textual-inversion-templates-dir",
                                         str(templates_with_filewords(Path(a.webui_dir), work / "templates"))],
                             extensions=[REPO], env=env)
        try:
            peers = Peers(a, server, ckpt, data, work, env)
            if a.quality:
                trained = train_for_quality(peers, kinds, sides)
            else:
                for kind in kinds:
                    results["rows"][kind] = measure_speed(peers, kind, sides)
        finally:
            server.stop()
        if a.quality:
            results["quality"] = judge_quality(peers, trained)
    if a.quality:
        print_quality(results)
    else:
        print_table(results)
    write_json(a.json, results)
    return results


def templates_with_filewords(webui_dir: Path, folder: Path) -> Path:
    """The WebUI's textual-inversion templates and ``filewords.txt`` ("[filewords]": the caption alone, as our
    ``filewords`` template), for ``--textual-inversion-templates-dir``."""
    shutil.copytree(webui_dir / "textual_inversion_templates", folder, dirs_exist_ok=True)
    (folder / "filewords.txt").write_text("[filewords]\n", encoding="utf-8")
    return folder


def measure_speed(peers: Peers, kind: str, sides: list[str]) -> dict:
    a = peers.args
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
    return summary


def train_for_quality(peers: Peers, kinds: list[str], sides: list[str]) -> dict:
    """Each side trains each kind ``--runs`` times with :data:`QUALITY`'s settings (ours with seeds ``--seed``,
    ``--seed + 1``, ...; the sides take turns run by run): {kind: {side: {"runs": [{"file", "seconds", "seed"}],
    "steps"} or {"error"}}}."""
    from scal_sdt.host.attention import context_widths
    from scal_sdt.host.standalone import load_host

    peers.widths = context_widths(load_host("toy", device="cpu").kv_projections())
    first_seed = peers.args.seed
    out: dict = {}
    for kind in kinds:
        q = QUALITY[kind]
        steps = 3 if peers.args.quick else q["steps"]  # --quick: a smoke run of every side and the judging
        peers.data = peers.data_sets[kind]
        out[kind] = {side: {"runs": [], "steps": steps} for side in sides}
        for run in range(max(1, getattr(peers.args, "runs", 1))):
            peers.args.seed = first_seed + run
            for side in sides:
                if "error" in out[kind][side]:
                    continue
                t = time.perf_counter()
                try:
                    if side == "cli":
                        peers.cli(kind, steps, quality=q)
                    else:
                        (peers.builtin if side == "built-in" else peers.ours)(kind, steps, quality=q)
                except Exception as e:  # noqa: BLE001 - a peer that cannot run is a row saying why
                    out[kind][side] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
                    continue
                seconds = time.perf_counter() - t
                out[kind][side]["runs"].append({"file": str(peers.files[peers.last]), "seconds": seconds,
                                                "seed": peers.args.seed})
                print(f"[quality {kind}] {side} run {run + 1}: trained in {seconds:.0f} s", flush=True)
    peers.args.seed = first_seed
    return out


def summarise(side: dict, key: str, score) -> dict:
    """A side's row: each run scored (``key``), their mean as the row's ``key``, the spread (sample standard
    deviation; 0 for one run) and the mean training seconds."""
    if "error" in side:
        return dict(side)
    runs = [dict(r, **{key: score(r["file"])}) for r in side["runs"]]
    values = [r[key] for r in runs]
    return {key: statistics.fmean(values), "spread": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seconds": statistics.fmean(r["seconds"] for r in runs), "steps": side["steps"], "runs": runs}


def judge_quality(peers: Peers, trained: dict) -> dict:
    """The toy judge's colour accuracy for each side's embedding, and the held-out loss under each side's
    hypernetwork, all on our standalone host with the same sampler and seeds; "before": the init vectors / no
    hypernetwork."""
    from scal_sdt.hypernetwork.apply import apply_hypernetwork, remove_hypernetwork
    from scal_sdt.textual_inversion.create import init_vectors
    from scal_sdt.training.dataset import LatentDataset
    from scal_sdt.training.images import scan_folder
    from scal_sdt.training.validation import heldout_loss

    judge = HeldOutColourJudge()
    host = judge.host
    out: dict = {}
    if "ti" in trained:
        name = "toy-pink"  # every side's vectors under one name: the same prompts, tokens and seeds

        def accuracy(vectors) -> float:
            return judge.colour(name, {name: vectors})

        q = QUALITY["ti"]
        rows = {"before": {"colour": accuracy(init_vectors(host, q["init_text"], q["vectors"]))}}
        for side, r in trained["ti"].items():
            rows[side] = summarise(r, "colour", lambda f: accuracy(judge.vectors(f)))
        out["ti"] = rows
    if "hn" in trained:
        held = peers.data_sets["held"]
        ds = LatentDataset(scan_folder(held).items, resolution=64, buckets=False, encode_moments=host.encode_moments,
                           cache_mode="deterministic")
        latents = torch.cat([ds.next_batch().latents for _ in range(ds.len_epoch)])
        prompts = [p.read_text(encoding="utf-8").strip() for p in sorted(held.glob("*.txt"))]
        rows = {"before": {"loss": heldout_loss(host, latents, prompts)}}
        def loss_with(file) -> float:
            apply_hypernetwork(host, file, 1.0)
            try:
                return heldout_loss(host, latents, prompts)
            finally:
                remove_hypernetwork(host)

        for side, r in trained["hn"].items():
            rows[side] = summarise(r, "loss", loss_with)
        out["hn"] = rows
    return out


def print_quality(results: dict) -> None:
    lines = []
    for kind, rows in results["quality"].items():
        what = "judge: colour" if kind == "ti" else "held-out loss"
        for side, r in rows.items():
            value = r.get("colour", r.get("loss"))
            runs = len(r.get("runs", []))
            spread = f" ± {r['spread']:.3f} ({runs} runs)" if runs > 1 else ""
            shown = f"failed: {r['error'][:120]}" if "error" in r else f"{what} {value:.3f}{spread}"
            lines.append([kind, side, shown, f"{r.get('seconds', float('nan')):.0f}"])
    print("\n" + table(["trainer", "side", "held-out result", "training wall s"], lines))


def print_table(results: dict) -> None:
    lines = []
    for kind, summary in results["rows"].items():
        for side, r in summary.items():
            if "error" in r:
                lines.append([kind, side, f"failed: {r['error'][:120]}", "", "", ""])
                continue
            ratio = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "1.00" if side == "built-in" else ""
            lines.append([kind, side, f"{r['s_step']:.3f}", ratio, f"{r['peak_mb']:.0f}", f"{r['held_mb']:.0f}"])
    print("\n" + table(["trainer", "side", "s/step", "ours / built-in", "peak MB above idle", "held after"], lines))


if __name__ == "__main__":
    main()
