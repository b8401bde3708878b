"""kohya-ss/sd-scripts' LoRA and Textual Inversion trainers against ours, on one single-file checkpoint.

kohya   ``train_network.py --network_module networks.lora`` and ``train_textual_inversion.py`` from a checkout of
        kohya-ss/sd-scripts (``--sd-scripts``), run with its own python (``--kohya-python``: a venv with its
        requirements); nothing of it is in this repository. The scripts run through
        ``bench/peer_drivers/kohya_sd1_sizes.py``, which lends sd-scripts the file's sizes (its loader builds SD1's;
        on ``real-sd1`` they are SD1's own) and then runs the script's own main with the arguments below.
ours    ``scal-sdt train-lora --network lora`` and ``scal-sdt train-embedding``, in this python.

Both sides: the same checkpoint file, the same pictures and captions (16 pictures of the toy world's held-out
colour in a kohya ``1_toypink`` folder, captioned "a large toypink star on a ..."; ours the same captions with
[name], filled with the same name), ``--resolution`` px, seed ``--seed``, fp32 on the CPU, latents cached, kohya with
``--sdpa``; LoRA rank 8 / alpha 8 on the UNet only at lr 1e-3, AdamW, constant rate; TI one vector from "red" at
lr 0.02, AdamW, the caption as the prompt.

Speed (the default): each side trains ``--warmup + --steps`` steps at batch ``--batch-size`` in a fresh process,
with ``bench/peer_drivers/step_clock.py`` stamping the wall and CPU clocks after every optimiser step (a global
torch hook, the same on both sides): s/step = the wall time from the end of step --warmup to the end of the last
over --steps; also the median step's wall time and the CPU seconds per step (on a shared CPU the CPU time is what
other programs disturb least). Peak memory = the process's peak RSS (GNU time's %M). Sides take turns,
``--repeats`` times (medians reported); the load average is recorded around every run.

``--quality``: each side trains ``--runs`` times (seeds ``--seed``, ``--seed + 1``, ...) with :data:`QUALITY`'s
settings (batch 8, 400 steps) and the toy judge scores the results on our standalone host
(``common.HeldOutColourJudge``: 32 "a large toypink SHAPE on a ... background" pictures, the fraction it calls
pink; chance 1/12): kohya's LoRA file through our LoRA loader, its embedding through our embedding reader, the
same prompts and sampler seeds for both sides; "before" = no LoRA / the init vector. Rows: mean ± spread of runs.

``--check-load``: what sd-scripts builds from the file (through the driver) against our host's models, on fixed
inputs: the largest difference of the text encoder's, the UNet's and the VAE encoder's outputs.

    PYTHONPATH=$PWD/extensions_builtin python bench/kohya.py --sd-scripts /work/hosts/sd-scripts \\
        --kohya-python /work/hosts/kohya-venv/bin/python --steps 40 --warmup 5 --repeats 3 --threads 1 --json kohya.json
    ... python bench/kohya.py ... --quality --threads 1 --json kohya-quality.json
    ... python bench/kohya.py ... --check-load
    ... python bench/kohya.py ... --model real-sd1 --threads 1      # full-size SD1, random weights: bighost lock
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # ti_step.build_components, common
from common import (HeldOutColourJudge, add_report_args, load_average, table, use_threads,  # noqa: E402
                    write_json, write_model)

DRIVER = REPO / "bench" / "peer_drivers" / "kohya_sd1_sizes.py"
NAME = "toypink"
LORA = dict(rank=8, alpha=8, lr="1e-3")
TI = dict(vectors=1, init_text="red", lr="0.02")
#: --quality: both kinds, both sides
QUALITY = dict(batch_size=8, steps=400)


def write_checkpoint(model: str, folder: Path) -> Path:
    from scal_sdt.host.checkpoint import save_checkpoint

    if model == "real-sd1":
        import torch
        from diffusers import AutoencoderKL

        from ti_step import build_components

        comps = build_components("real-sd1")
        torch.manual_seed(1)  # the SD VAE's shapes: kohya builds exactly these
        comps.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                                  block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        # fp16 on disk (both sides load it into fp32 on the CPU): a 4 GB fp32 model converted and serialised took
        # more than 11 GB of this shared machine's memory
        for module in (comps.unet, comps.vae, *comps.text_encoders):
            module.half()
        return save_checkpoint(comps, folder / f"{model}.safetensors")
    return write_model(model, folder)


def make_data(root: Path) -> Path:
    """kohya's layout: ``root/kohya/1_toypink/`` with the pictures and their captions (the name written in), and
    ``root/ours/`` with the same captions holding [name] (ours fills it with the name: the same prompts)."""
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    make_held_out_colour_set(root / "ours", 16, seed=5)
    folder = root / "kohya" / f"1_{NAME}"
    shutil.copytree(root / "ours", folder)
    for caption in folder.glob("*.txt"):
        caption.write_text(caption.read_text(encoding="utf-8").replace("[name]", NAME), encoding="utf-8")
    return root


def tokenizer_cache(folder: Path) -> Path:
    """kohya's --tokenizer_cache_dir holding CLIP-L's tokenizer files (the same BPE our tokenizer and the toy model
    use): kohya would otherwise download openai/clip-vit-large-patch14's."""
    from scal_sdt.host.text_encoder_folder import write_clip_text_folder
    from scal_sdt.host.tiny import clip_l_config

    write_clip_text_folder(clip_l_config(width=768, layers=12, heads=12), folder / "openai_clip-vit-large-patch14")
    return folder


class Sides:
    """Runs one side's trainer in a process of its own: its command, wall time, peak RSS and result file."""

    def __init__(self, a, ckpt: Path, data: Path, work: Path):
        self.a, self.ckpt, self.data, self.work = a, ckpt, data, work
        self.tok = tokenizer_cache(work / "tokenizers")
        self.threads = use_threads(a.threads)
        self.count = 0

    def env(self, kohya: bool) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="", **self.threads)
        if not kohya:
            env["PYTHONPATH"] = str(REPO / "extensions_builtin")
        return env

    def command(self, side: str, kind: str, steps: int, batch: int, out: Path, seed: int) -> list[str]:
        a = self.a
        settings = LORA if kind == "lora" else TI
        if side == "kohya":
            script = "train_network.py" if kind == "lora" else "train_textual_inversion.py"
            # through the driver: it lends sd-scripts the file's sizes (SD1's own on real-sd1) and starts the clock
            cmd = [a.kohya_python, str(DRIVER), a.sd_scripts, script, "--pretrained_model_name_or_path", str(self.ckpt),
                   "--train_data_dir", str(self.data / "kohya"), "--caption_extension", ".txt", "--resolution",
                   str(a.resolution), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
                   "--output_dir", str(out), "--output_name", NAME, "--save_model_as", "safetensors",
                   "--optimizer_type", "AdamW", "--lr_scheduler", "constant", "--mixed_precision", "no",
                   "--seed", str(seed), "--cache_latents", "--sdpa", "--tokenizer_cache_dir", str(self.tok),
                   "--max_data_loader_n_workers", "0", "--learning_rate", settings["lr"]]
            if kind == "lora":
                return cmd + ["--network_module", "networks.lora", "--network_dim", str(LORA["rank"]),
                              "--network_alpha", str(LORA["alpha"]), "--network_train_unet_only"]
            return cmd + ["--token_string", NAME, "--init_word", TI["init_text"], "--num_vectors_per_token",
                          str(TI["vectors"])]
        common = ["--model", str(self.ckpt), "--data", str(self.data / "ours"), "--name", NAME,
                  "--resolution", str(a.resolution), "--batch-size", str(batch), "--steps", str(steps),
                  "--out", str(out), "--log-dir", str(out / "run"), "--seed", str(seed), "--device", "cpu",
                  "--preview-every", "0", "--save-every", "0", "--lr", settings["lr"]]
        # our command line, with the same step clock installed first
        ours = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); import step_clock; "
                "step_clock.install_from_env(); from scal_sdt.cli import main; main(sys.argv[1:])", str(DRIVER.parent)]
        if kind == "lora":
            return [*ours, "train-lora", *common, "--network", "lora", "--rank", str(LORA["rank"]), "--alpha",
                    str(LORA["alpha"])]
        return [*ours, "train-embedding", *common, "--template", "filewords", "--vectors", str(TI["vectors"]),
                "--init-text", TI["init_text"]]

    def run(self, side: str, kind: str, steps: int, batch: int, seed: int | None = None) -> dict:
        self.count += 1
        out = self.work / "out" / f"{side}-{kind}-{self.count}"
        out.mkdir(parents=True)
        cmd = self.command(side, kind, steps, batch, out, self.a.seed if seed is None else seed)
        timing, clock = out / "time.txt", out / "steps.txt"
        cwd = self.a.sd_scripts if side == "kohya" else str(REPO)
        load = load_average()
        proc = subprocess.run(["/usr/bin/time", "-o", str(timing), "-f", "%e %M", *cmd], cwd=cwd,
                              env=dict(self.env(side == "kohya"), STEP_CLOCK=str(clock)), capture_output=True,
                              text=True, timeout=7200)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).splitlines()
            first = next((i for i, line in enumerate(lines) if "Error" in line and "Traceback" not in line), None)
            head = "\n".join(lines[first:first + 4]) if first is not None else ""
            raise RuntimeError(f"{side} {kind} exited {proc.returncode}: {head}\n...\n" + "\n".join(lines)[-2000:])
        seconds, peak_kb = timing.read_text().split()[-2:]
        stamps = [tuple(map(float, line.split())) for line in clock.read_text().splitlines()]
        if len(stamps) != steps:
            raise RuntimeError(f"{side} {kind}: {len(stamps)} optimiser steps timed for {steps} steps")
        return {"wall_s": float(seconds), "peak_mb": int(peak_kb) / 1024, "command": cmd, "stamps": stamps,
                "file": str(out / f"{NAME}.safetensors"), "load": [load, load_average()]}


def measure_speed(runner: Sides, kind: str, sides: list[str]) -> dict:
    """Each side's s/step over the steps after --warmup (from the step clock: the time from the end of step
    --warmup to the end of the last, over --steps), the median step's wall time, the CPU seconds per step, and its
    process's peak RSS; medians of --repeats, the sides taking turns."""
    a = runner.a
    rows: dict = {s: [] for s in sides}
    errors: dict = {}
    for rep in range(a.repeats):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            if side in errors:
                continue
            try:
                r = runner.run(side, kind, a.warmup + a.steps, a.batch_size)
            except Exception as e:  # noqa: BLE001 - a peer that cannot run is a row saying why
                errors[side] = f"{type(e).__name__}: {e}"
                print(f"[{kind}] {side} failed: {errors[side][:1500]}", flush=True)
                continue
            timed = r["stamps"][a.warmup - 1:]
            walls = [b[0] - e[0] for e, b in zip(timed, timed[1:])]
            row = {"s_step": (timed[-1][0] - timed[0][0]) / a.steps, "median_step": statistics.median(walls),
                   "cpu_step": (timed[-1][1] - timed[0][1]) / a.steps, "peak_mb": r["peak_mb"],
                   "wall_s": r["wall_s"], "load": r["load"], "command": r["command"]}
            rows[side].append(row)
            print(f"[{kind} {rep + 1}] {side}: {row['s_step']:.3f} s/step (median {row['median_step']:.3f}, CPU "
                  f"{row['cpu_step']:.3f}), peak {row['peak_mb']:.0f} MB, load {min(row['load']):.1f}-"
                  f"{max(row['load']):.1f}", flush=True)
    summary = {}
    for side in sides:
        if side in errors:
            summary[side] = {"error": errors[side][:3000]}
        elif rows[side]:
            summary[side] = {k: statistics.median(r[k] for r in rows[side])
                             for k in ("s_step", "median_step", "cpu_step", "peak_mb")}
            summary[side].update(command=rows[side][-1]["command"], runs=rows[side])
    ours, theirs = summary.get("ours", {}), summary.get("kohya", {})
    if "s_step" in ours and "s_step" in theirs:
        ours["ratios"] = {k: ours[k] / theirs[k] for k in ("s_step", "median_step", "cpu_step", "peak_mb")}
    return summary


def train_and_judge(runner: Sides, kinds: list[str], sides: list[str]) -> dict:
    """--quality: each side trains each kind --runs times (seeds --seed, --seed + 1, ...; the sides take turns) with
    :data:`QUALITY`'s settings; then the toy judge scores every result and the "before" row on our host. A side's
    row: the mean of its runs, their spread (sample standard deviation) and every run."""
    trained: dict = {}
    for kind in kinds:
        for run in range(runner.a.runs):
            seed = runner.a.seed + run
            for side in sides:
                if "error" in trained.get((kind, side), {}):
                    continue
                try:
                    r = runner.run(side, kind, QUALITY["steps"], QUALITY["batch_size"], seed)
                    trained.setdefault((kind, side), {"runs": []})["runs"].append(dict(r, seed=seed))
                except Exception as e:  # noqa: BLE001 - a peer that cannot run is a row saying why
                    trained[(kind, side)] = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
                done = trained[(kind, side)]
                print(f"[quality {kind} seed {seed}] {side}: "
                      f"{done['runs'][-1]['wall_s'] if 'runs' in done else 'failed'} s", flush=True)
    from scal_sdt.lora.adapters import load_lora
    from scal_sdt.textual_inversion.create import init_vectors

    judge = HeldOutColourJudge()

    def colour(kind: str, file: str) -> float:
        if kind == "ti":  # the vectors under one name for every side: the same prompts, tokens and seeds
            return judge.colour("toy-pink", {"toy-pink": judge.vectors(file)})
        lora = load_lora(file, judge.host.lora_targets(), "sd1").attach(1.0)
        try:
            return judge.colour(NAME)
        finally:
            lora.detach()

    out: dict = {}
    for kind in kinds:
        before = (judge.colour("toy-pink", {"toy-pink": init_vectors(judge.host, TI["init_text"], TI["vectors"])})
                  if kind == "ti" else judge.colour(NAME))
        out[kind] = {"before": {"colour": before}}
        for side in sides:
            r = trained[(kind, side)]
            if "error" in r:
                out[kind][side] = r
                continue
            runs = [{"seed": x["seed"], "colour": colour(kind, x["file"]), "wall_s": x["wall_s"],
                     "peak_mb": x["peak_mb"], "load": x["load"], "command": x["command"]} for x in r["runs"]]
            values = [x["colour"] for x in runs]
            out[kind][side] = {"colour": statistics.fmean(values),
                               "spread": statistics.stdev(values) if len(values) > 1 else 0.0,
                               "wall_s": statistics.fmean(x["wall_s"] for x in runs),
                               "peak_mb": max(x["peak_mb"] for x in runs), "runs": runs}
    return out


def check_load(a, ckpt: Path) -> dict:
    """The largest difference between what sd-scripts' loader builds from ``ckpt`` (through the driver) and our
    host's models compute on the driver's fixed inputs."""
    import torch
    from safetensors.torch import load_file

    from scal_sdt.host.standalone import load_components

    sys.path.insert(0, str(DRIVER.parent))
    from kohya_sd1_sizes import fixed_inputs

    out = ckpt.with_name("kohya-outputs.safetensors")
    subprocess.run([a.kohya_python, str(DRIVER), a.sd_scripts, "--outputs", str(ckpt), str(out)], cwd=a.sd_scripts,
                   env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
                   check=True, capture_output=True)
    theirs = load_file(str(out))
    comps = load_components(str(ckpt))
    ids, x, t, image = fixed_inputs(torch)
    with torch.no_grad():
        context = comps.text_encoders[0](ids).last_hidden_state
        ours = {"context": context, "eps": comps.unet(x, t, encoder_hidden_states=context).sample,
                "latent": comps.vae.encode(image).latent_dist.mean}
    return {k: {"max_abs_diff": float((theirs[k] - v).abs().max()), "max_abs": float(v.abs().max())}
            for k, v in ours.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd-scripts", required=True, help="a checkout of kohya-ss/sd-scripts")
    ap.add_argument("--kohya-python", required=True, help="the python of a venv with sd-scripts' requirements")
    ap.add_argument("--model", default="toy", help="toy (the toy world's model, through the driver) or real-sd1 "
                    "(full-size SD1, random weights; sd-scripts as it is)")
    ap.add_argument("--kinds", default="lora,ti")
    ap.add_argument("--sides", default="kohya,ours")
    ap.add_argument("--steps", type=int, default=40, help="timed steps, after --warmup untimed ones")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quality", action="store_true", help="train per side (batch 8, 400 steps) and judge")
    ap.add_argument("--runs", type=int, default=1, help="--quality: trainings per side, seeds --seed, --seed + 1, ...")
    ap.add_argument("--check-load", action="store_true",
                    help="only compare what sd-scripts builds from the file with our host's models")
    add_report_args(ap)
    a = ap.parse_args(argv)
    commit = subprocess.run(["git", "-C", a.sd_scripts, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    results: dict = {"args": vars(a), "sd_scripts_commit": commit.strip(), "rows": {}}
    sides = [s for s in a.sides.split(",") if s]
    kinds = [k for k in a.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="scal-kohya-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        # in a process of its own: the memory it takes is given back before the trainers run
        subprocess.run([sys.executable, __file__, "--write-checkpoint", a.model, str(work / "models")], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "extensions_builtin")})
        ckpt = work / "models" / f"{a.model}.safetensors"
        if a.check_load:
            results["check_load"] = check_load(a, ckpt)
            print(json.dumps(results["check_load"], indent=1))
            write_json(a.json, results)
            return results
        runner = Sides(a, ckpt, make_data(work / "data"), work)
        if a.quality:
            results["quality"] = train_and_judge(runner, kinds, sides)
        else:
            for kind in kinds:
                results["rows"][kind] = measure_speed(runner, kind, sides)
    print_report(results)
    write_json(a.json, results)
    return results


def print_report(results: dict) -> None:
    rows = []
    if "quality" in results:
        for kind, by_side in results["quality"].items():
            for side, r in by_side.items():
                runs = len(r.get("runs", []))
                spread = f" ± {r['spread']:.2f} ({runs} runs)" if runs > 1 else ""
                shown = f"failed: {r['error'][:300]!r}" if "error" in r else f"{r['colour']:.2f}{spread}"
                rows.append([kind, side, shown, f"{r['wall_s']:.0f}" if "wall_s" in r else "",
                             f"{r['peak_mb']:.0f}" if "peak_mb" in r else ""])
        print("\n" + table(["trainer", "side", "judge: pink", "wall s", "peak MB"], rows))
        return
    for kind, summary in results["rows"].items():
        for side, r in summary.items():
            if "error" in r:
                rows.append([kind, side, f"failed: {r['error'][:300]!r}", "", ""])
            else:
                ratio = " / ".join(f"{v:.2f}" for v in r["ratios"].values()) if "ratios" in r else ""
                rows.append([kind, side, f"{r['s_step']:.3f}", f"{r['median_step']:.3f}", f"{r['cpu_step']:.3f}",
                             f"{r['peak_mb']:.0f}", ratio])
    print("\n" + table(["trainer", "side", "s/step", "median step s", "CPU s/step", "peak MB",
                         "ours / kohya (the four)"], rows))

if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-checkpoint"]:
        write_checkpoint(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
