"""kohya-ss/sd-scripts' LoRA and Textual Inversion trainers against ours, on one single-file checkpoint.

kohya   ``train_network.py --network_module networks.lora`` and ``train_textual_inversion.py`` from a checkout of
        kohya-ss/sd-scripts (``--sd-scripts``), run with its own python (``--kohya-python``: a venv with its
        requirements); nothing of it is in this repository.
ours    ``scal-sdt train-lora --network lora`` and ``scal-sdt train-embedding``, in this python.

Both sides: the same checkpoint file, the same pictures and captions (16 pictures of the toy world's held-out
colour in a kohya ``1_toypink`` folder, captioned "a large toypink star on a ..."), 64 px (``--resolution``), batch
``--batch-size``, seed 1, fp32 on the CPU, latents cached; LoRA rank 8 / alpha 8 on the UNet only at lr 1e-3, AdamW;
TI one vector from "red" at lr 0.02, AdamW, the caption as the prompt. Each side runs ``--warmup`` steps and then
``--warmup + --steps`` steps in a fresh process; seconds per step = the difference of the two wall times / --steps
(model loading, caching and saving cancel out); peak memory = the larger peak RSS of the two processes (GNU time's
%M). Sides take turns.

kohya builds its UNet, VAE and text encoder at SD1's sizes whatever the file holds (``library/model_util.py`` and
``library/original_unet.py`` hard-code 320/640/1280 channels, CLIP-L's 768 width and 12 layers), so it cannot load
the toy model or any smaller SD1-layout checkpoint: ``--model toy`` records the error it gives. ``--model real-sd1``
writes a full-size SD1 checkpoint (UNet, CLIP-L text encoder and SD VAE shapes; random weights, stored in fp16),
which it loads;
the toy judge cannot score a random-weight model, so those rows are time and memory only.

    PYTHONPATH=$PWD/extensions_builtin python bench/kohya.py --sd-scripts /work/hosts/sd-scripts \\
        --kohya-python /work/hosts/kohya-venv/bin/python --model real-sd1 --threads 1 --json kohya.json
    ... python bench/kohya.py ... --model toy --steps 1 --warmup 1       # what breaks on the toy model
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # ti_step.build_components
NAME = "toypink"
LORA = dict(rank=8, alpha=8, lr="1e-3")
TI = dict(vectors=1, init_text="red", lr="0.02")


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
    from scal_sdt.host.standalone import load_components

    return save_checkpoint(load_components(model), folder / f"{model}.safetensors")


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
    def __init__(self, a, ckpt: Path, data: Path, work: Path):
        self.a, self.ckpt, self.data, self.work = a, ckpt, data, work
        self.tok = tokenizer_cache(work / "tokenizers")
        self.count = 0

    def env(self, kohya: bool) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
        if not kohya:
            env["PYTHONPATH"] = str(REPO / "extensions_builtin")
        if self.a.threads:
            env.update(OMP_NUM_THREADS=str(self.a.threads), MKL_NUM_THREADS=str(self.a.threads))
        return env

    def command(self, side: str, kind: str, steps: int, out: Path) -> list[str]:
        a = self.a
        if side == "kohya":
            script = "train_network.py" if kind == "lora" else "train_textual_inversion.py"
            cmd = [a.kohya_python, str(Path(a.sd_scripts) / script), "--pretrained_model_name_or_path", str(self.ckpt),
                   "--train_data_dir", str(self.data / "kohya"), "--caption_extension", ".txt", "--resolution",
                   str(a.resolution), "--train_batch_size", str(a.batch_size), "--max_train_steps", str(steps),
                   "--output_dir", str(out), "--output_name", NAME, "--save_model_as", "safetensors",
                   "--optimizer_type", "AdamW", "--lr_scheduler", "constant", "--mixed_precision", "no",
                   "--seed", "1", "--cache_latents", "--tokenizer_cache_dir", str(self.tok),
                   "--max_data_loader_n_workers", "0"]
            if kind == "lora":
                cmd += ["--network_module", "networks.lora", "--network_dim", str(LORA["rank"]), "--network_alpha",
                        str(LORA["alpha"]), "--network_train_unet_only", "--learning_rate", LORA["lr"]]
            else:
                cmd += ["--token_string", NAME, "--init_word", TI["init_text"], "--num_vectors_per_token",
                        str(TI["vectors"]), "--learning_rate", TI["lr"]]
            return cmd
        common = ["--model", str(self.ckpt), "--data", str(self.data / "ours"), "--name", NAME,
                  "--resolution", str(a.resolution), "--batch-size", str(a.batch_size), "--steps", str(steps),
                  "--out", str(out), "--log-dir", str(out / "run"), "--seed", "1", "--device", "cpu",
                  "--preview-every", "0", "--save-every", "0"]
        if kind == "lora":
            return [sys.executable, "-m", "scal_sdt.cli", "train-lora", *common, "--network", "lora", "--rank",
                    str(LORA["rank"]), "--alpha", str(LORA["alpha"]), "--lr", LORA["lr"]]
        return [sys.executable, "-m", "scal_sdt.cli", "train-embedding", *common, "--template", "filewords",
                "--vectors", str(TI["vectors"]), "--init-text", TI["init_text"], "--lr", TI["lr"]]

    def run(self, side: str, kind: str, steps: int) -> dict:
        self.count += 1
        out = self.work / "out" / f"{side}-{kind}-{self.count}"
        out.mkdir(parents=True)
        cmd = self.command(side, kind, steps, out)
        timing = out / "time.txt"
        cwd = self.a.sd_scripts if side == "kohya" else str(REPO)
        proc = subprocess.run(["/usr/bin/time", "-o", str(timing), "-f", "%e %M", *cmd], cwd=cwd,
                              env=self.env(side == "kohya"), capture_output=True, text=True, timeout=7200)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).splitlines()
            first = next((i for i, line in enumerate(lines) if "Error" in line and "Traceback" not in line), None)
            head = "\n".join(lines[first:first + 4]) if first is not None else ""
            raise RuntimeError(f"{side} {kind} exited {proc.returncode}: {head}\n...\n" + "\n".join(lines)[-2000:])
        seconds, peak_kb = timing.read_text().split()[-2:]
        return {"wall_s": float(seconds), "peak_mb": int(peak_kb) / 1024, "command": cmd, "out": str(out)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd-scripts", required=True, help="a checkout of kohya-ss/sd-scripts")
    ap.add_argument("--kohya-python", required=True, help="the python of a venv with sd-scripts' requirements")
    ap.add_argument("--model", default="real-sd1", help="real-sd1 (full-size SD1, random weights) or toy")
    ap.add_argument("--kinds", default="lora,ti")
    ap.add_argument("--sides", default="kohya,ours")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    commit = subprocess.run(["git", "-C", a.sd_scripts, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    results: dict = {"args": vars(a), "sd_scripts_commit": commit.strip(), "rows": {}}
    sides = [s for s in a.sides.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="scal-kohya-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        # in a process of its own: the memory it takes is given back before the trainers run
        subprocess.run([sys.executable, __file__, "--write-checkpoint", a.model, str(work / "models")], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "extensions_builtin")})
        ckpt = work / "models" / f"{a.model}.safetensors"
        data = make_data(work / "data")
        runner = Sides(a, ckpt, data, work)
        for kind in [k for k in a.kinds.split(",") if k]:
            rows: dict = {s: [] for s in sides}
            errors: dict = {}
            for rep in range(a.repeats):
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    if side in errors:
                        continue
                    try:
                        short = runner.run(side, kind, a.warmup)
                        long = runner.run(side, kind, a.warmup + a.steps)
                    except Exception as e:  # noqa: BLE001 - a peer that cannot run is a row saying why
                        errors[side] = f"{type(e).__name__}: {e}"
                        print(f"[{kind}] {side} failed: {errors[side][:1500]}", flush=True)
                        continue
                    row = {"s_step": (long["wall_s"] - short["wall_s"]) / a.steps,
                           "peak_mb": max(short["peak_mb"], long["peak_mb"]), "command": long["command"]}
                    rows[side].append(row)
                    print(f"[{kind} {rep + 1}] {side}: {row['s_step']:.3f} s/step, peak {row['peak_mb']:.0f} MB",
                          flush=True)
            summary = {}
            for side in sides:
                if side in errors:
                    summary[side] = {"error": errors[side][:3000]}
                elif rows[side]:
                    ordered = sorted(rows[side], key=lambda r: r["s_step"])
                    summary[side] = dict(ordered[len(ordered) // 2], runs=rows[side])
            if "s_step" in summary.get("ours", {}) and "s_step" in summary.get("kohya", {}):
                summary["ours"]["time_ratio"] = summary["ours"]["s_step"] / summary["kohya"]["s_step"]
                summary["ours"]["peak_ratio"] = summary["ours"]["peak_mb"] / summary["kohya"]["peak_mb"]
            results["rows"][kind] = summary
    print("\n| trainer | side | s/step | peak MB | ours / kohya |")
    print("|---|---|---|---|---|")
    for kind, summary in results["rows"].items():
        for side, r in summary.items():
            if "error" in r:
                print(f"| {kind} | {side} | failed: {r['error'][:300]!r} | | |")
            else:
                ratio = f"time {r['time_ratio']:.2f}, peak {r['peak_ratio']:.2f}" if "time_ratio" in r else ""
                print(f"| {kind} | {side} | {r['s_step']:.3f} | {r['peak_mb']:.0f} | {ratio} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-checkpoint"]:
        write_checkpoint(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
