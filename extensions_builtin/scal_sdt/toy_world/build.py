"""``scal-sdt make-toy-world``: train every toy model from a seed and write the files shipped in ``pretrained/``.

The recipe, in order: render the pools; the CLIP (contrastive); the VAE; the SD1-layout UNet on the VAE's latents
of its own pool (world.UNET_MIX: more large shapes on white), conditioned on the CLIP's text tower; the judge; the
WD14-format tagger. Then the measured quality goes into
``manifest.json`` beside the sha256 of every file, so ``--check`` can say whether a rebuild is bit-for-bit the
shipped one (it is on the same torch version and thread count: the run is single-process and deterministic).
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import check_bounds, option
from ..files import atomic_write_text
from ..host.components import Components
from ..host.families import SD1
from ..host.toy import TOY_CHECKPOINT

PRETRAINED = TOY_CHECKPOINT.parent
CHECKPOINT = TOY_CHECKPOINT.name
CLIP_DIR = "toy-clip"
TAGGER_DIR = "toy-tagger"
JUDGE = "toy-judge.safetensors"
MANIFEST = "manifest.json"
STAGES = ("clip", "vae", "unet", "judge", "tagger", "evaluate")


@dataclass(kw_only=True)
class ToyWorldConfig:
    out: str = option(str(PRETRAINED), "folder for the models (the default is the one the package ships)")
    seed: int = option(0, "seed of every random choice")
    threads: int = option(2, "CPU threads (the result is bit-for-bit the same for the same threads and torch)",
                          min=1)
    pool: int = option(20000, "rendered scenes each model trains on", min=64)
    clip_steps: int = option(1200, "CLIP training steps", min=1)
    vae_steps: int = option(2500, "VAE training steps", min=1)
    unet_steps: int = option(3000, "UNet training steps", min=1)
    judge_steps: int = option(1000, "judge training steps", min=1)
    tagger_steps: int = option(3000, "tagger training steps", min=1)
    eval_prompts: int = option(96, "prompts for the prompt-accuracy measurement (0 skips it)", min=0)
    eval_images: int = option(512, "fresh images for the CLIP, VAE, judge and tagger measurements", min=16)
    stages: str = option("all", "what to (re)build: all, or a comma list of clip, vae, unet, judge, tagger, evaluate "
                                "(unet needs clip and vae in the same run; the others keep their files)")
    check: bool = option(False, "compare the rebuilt files with the manifest in --out instead of replacing them")

    def __post_init__(self):
        check_bounds(self)
        self.stage_list()

    def stage_list(self) -> list[str]:
        if self.stages.strip().lower() == "all":
            return list(STAGES)
        names = [s.strip() for s in self.stages.split(",") if s.strip()]
        unknown = [s for s in names if s not in STAGES]
        if unknown or not names:
            raise ValueError(f"stages: unknown {unknown or self.stages!r}; choose all or from {', '.join(STAGES)}")
        if "unet" in names and not {"clip", "vae"} <= set(names):
            raise ValueError("stages: the unet trains on the CLIP and VAE of the same run; add clip,vae")
        return names


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_toy_world(cfg: ToyWorldConfig, log=print) -> dict:
    """Train and save every toy model into ``cfg.out`` (or, with ``check``, into ``cfg.out``/``rebuild`` and
    compare); returns the manifest."""
    from ..host.checkpoint import save_checkpoint
    from ..host.standalone import StandaloneHost
    from .clip_model import retrieval_accuracy, save_clip, text_encoder_from_clip, train_clip
    from .judge import sample_labelled, train_judge
    from .pool import render_pool
    from .quality import prompt_accuracy, prompt_set
    from .tagger import onnx_f1, save_tagger, tag_counts, train_tagger
    from .unet import train_unet
    from .vae import reconstruction_error, train_vae
    from .world import UNET_MIX

    stages = cfg.stage_list()
    out = Path(cfg.out) / "rebuild" if cfg.check else Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else {}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    started = time.time()
    seconds, metrics = dict(previous.get("seconds", {})), dict(previous.get("metrics", {}))  # of stages not rerun

    def stage(name):
        seconds[name] = round(time.time() - stage.t, 1)
        log(f"{name}: {seconds[name]} s")
        stage.t = time.time()
    stage.t = started

    try:
        pool = render_pool(cfg.pool, cfg.seed)  # the base models never see the held-out concepts
        test_pool = render_pool(cfg.eval_images, cfg.seed + 1_000_003)
        fresh_scenes, fresh_images = sample_labelled(cfg.eval_images, cfg.seed + 7)
        stage("render")

        if "clip" in stages:
            clip = train_clip(pool, cfg.clip_steps, cfg.seed, log=log)
            save_clip(clip, out / CLIP_DIR)
            metrics["clip_retrieval_top1"] = round(retrieval_accuracy(clip, test_pool, cfg.eval_images), 4)
            text_encoder = text_encoder_from_clip(clip)
            stage("clip")

        if "vae" in stages:
            vae = train_vae(pool, cfg.vae_steps, cfg.seed, log=log)
            metrics["vae_mae"] = round(reconstruction_error(vae, test_pool, cfg.eval_images), 4)
            stage("vae")

        if "unet" in stages:  # on the CLIP's text tower and the VAE's latents of this same run (stage_list checks)
            unet_pool = render_pool(cfg.pool, cfg.seed, mix=UNET_MIX)  # more legible shapes than the others'
            unet = train_unet(unet_pool, vae, text_encoder, cfg.unet_steps, cfg.seed, log=log)
            components = Components(SD1, unet, vae, [text_encoder], name="toy", source="toy")
            save_checkpoint(components, out / CHECKPOINT, dtype=torch.float16, with_yaml=False)
            stage("unet")

        if "judge" in stages:
            judge = train_judge(cfg.judge_steps, seed=cfg.seed)
            judge.info.pop("train_seconds", None)  # keep the file reproducible
            judge.save(out / JUDGE)
            metrics["judge"] = {k: round(v, 4) for k, v in judge.accuracy(fresh_scenes, fresh_images).items()}
            stage("judge")

        if "tagger" in stages:  # independent of the other models; a tagger tags anything, held-out concepts too
            full_pool = render_pool(cfg.pool // 2, cfg.seed + 2, allow_held_out=True)
            net, tags = train_tagger(full_pool, cfg.tagger_steps, cfg.seed, log=log)
            save_tagger(net, tags, tag_counts(full_pool.scenes), out / TAGGER_DIR)
            metrics["tagger_f1"] = round(onnx_f1(out / TAGGER_DIR, fresh_scenes, fresh_images), 4)
            stage("tagger")

        if "evaluate" in stages and cfg.eval_prompts:
            from ..host.checkpoint import load_checkpoint
            from .judge import Judge

            host = StandaloneHost(load_checkpoint(out / CHECKPOINT), device="cpu")
            metrics["prompt_accuracy"] = {k: round(v, 4) for k, v in prompt_accuracy(
                host, Judge.load(out / JUDGE), prompt_set(cfg.eval_prompts, cfg.seed + 11), seed=cfg.seed).items()}
            stage("evaluate")
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST and "rebuild" not in p.parts[len(out.parts):])
    manifest = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "check")},
        "torch": torch.__version__, "python": platform.python_version(),
        "files": {p.relative_to(out).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files},
        "metrics": metrics, "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if cfg.check:
        shipped = json.loads((Path(cfg.out) / MANIFEST).read_text())
        manifest["identical"] = {name: shipped["files"].get(name, {}).get("sha256") == entry["sha256"]
                                 for name, entry in manifest["files"].items()}
        manifest["shipped_torch"] = shipped.get("torch")
    log(f"toy world in {out}: {json.dumps(metrics)}")
    return manifest
