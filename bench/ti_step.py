"""Textual Inversion step: ours vs the diffusers reference, side by side on the same frozen model and data.

ours       EmbeddingJob.loss: only the placeholder vectors are parameters, spliced into the token lookup.
reference  diffusers examples/textual_inversion/textual_inversion.py: the placeholder token is added to the
           vocabulary, the whole token-embedding table is trainable (AdamW over all of it), and after every
           optimizer step all rows but the placeholder's are restored (index_no_updates). SDXL: both tables.

Both sides: same latents, prompts, noise and timesteps (one generator, drawn in the same order), same batch,
resolution, lr, AdamW (weight_decay 0), warm-up and timed steps; fp32, plus fp16 autocast + GradScaler on CUDA.
Each (model, precision, side) runs in a fresh subprocess, so peak RSS belongs to that side alone.

    python bench/ti_step.py                                   # tiny-sd1, 64 px, CPU
    python bench/ti_step.py --model tiny-sd1,tiny-sd2,tiny-sdxl --steps 5
    python bench/ti_step.py --device cuda --real-sd1 --resolution 512 --json ti.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

NAME, TEMPLATE, INIT_TEXT, CHECK_STEP = "scalbench", "a photo of [name]", "*", 3


def build_components(model: str):
    """A built-in tiny model, a checkpoint/diffusers path, 'real-sd1' (full-size SD1 UNet + CLIP-L, random) or
    'real-sdxl' (full-size SDXL UNet + CLIP-L + OpenCLIP bigG, random)."""
    from scal_sdt.host.standalone import load_components
    if model == "real-sdxl":
        return build_real_sdxl()
    if model != "real-sd1":
        return load_components(model)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    from scal_sdt.host.components import Components
    from scal_sdt.host.families import SD1
    from scal_sdt.host.tiny import _randomize_zero_inits, clip_l_config, vae_config
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    _randomize_zero_inits(unet)
    te = CLIPTextModel(clip_l_config(width=768, layers=12, heads=12))  # vocab 49408, quick_gelu
    vae = AutoencoderKL(**vae_config(), scaling_factor=SD1.vae_scale)  # unused: latents are given
    return Components(family=SD1, unet=unet, vae=vae, text_encoders=[te], name="real-sd1", source="real-sd1")


def build_real_sdxl():
    """SDXL base 1.0's shapes (2.57B-weight UNet, CLIP-L + OpenCLIP bigG text towers), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from scal_sdt.host.components import Components
    from scal_sdt.host.families import SDXL
    from scal_sdt.host.tiny import _randomize_zero_inits, clip_l_config, open_clip_config, vae_config
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    _randomize_zero_inits(unet)
    encoders = [CLIPTextModel(clip_l_config(width=768, layers=12, heads=12)),
                CLIPTextModelWithProjection(open_clip_config(width=1280, layers=32, heads=20, projection_dim=1280))]
    vae = AutoencoderKL(**vae_config(), scaling_factor=SDXL.vae_scale)  # small: latents are cached before the steps
    return Components(family=SDXL, unet=unet, vae=vae, text_encoders=encoders, name="real-sdxl", source="real-sdxl")


def setup_ours(host, latents, a, nudge: bool = False):
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.textual_inversion.create import init_vectors
    from scal_sdt.textual_inversion.trainer import EmbeddingJob
    init = init_vectors(host, INIT_TEXT, a.vectors)
    if nudge:  # one ulp up: the float-noise floor for the check
        init = {k: torch.nextafter(v, torch.full_like(v, math.inf)) for k, v in init.items()}
    vectors = {k: torch.nn.Parameter(v.to(host.device, torch.float32)) for k, v in init.items()}
    batch = SimpleNamespace(latents=latents, captions=[""] * len(latents), weights=None)
    data = SimpleNamespace(next_batch=lambda: batch)
    job = EmbeddingJob(EmbeddingConfig(name=NAME, seed=a.seed, vectors=a.vectors), host, data, vectors, [TEMPLATE],
                       Path(tempfile.gettempdir()))
    return job.loss, list(vectors.values()), lambda: None, lambda: {k: v.detach() for k, v in vectors.items()}


def setup_reference(host, latents, a):
    from diffusers import DDPMScheduler
    from scal_sdt.host.prompt import tokenize, with_padding
    from scal_sdt.textual_inversion.create import init_vectors
    fam, dev, n, bsz = host.family, host.device, a.vectors, len(latents)
    wdt = torch.float16 if a.precision == "fp16" else torch.float32  # accelerate: frozen UNet in weight_dtype
    unet = host.components.unet
    if wdt != torch.float32:
        for m in (unet, host.components.vae):
            m.to(wdt)
    init = init_vectors(host, INIT_TEXT, n)  # the initializer token's rows, as ours starts from
    vocab = host.components.text_encoders[0].get_input_embeddings().weight.shape[0]
    placeholder_ids = list(range(vocab, vocab + n))  # tokenizer.add_tokens(...): new ids after the vocabulary
    tables, origs = [], []
    for spec, te in zip(fam.encoders, host.components.text_encoders):
        te.set_input_embeddings(te.get_input_embeddings().wrapped)  # the raw nn.Embedding, no splicing
        table = te.resize_token_embeddings(vocab + n, mean_resizing=False)
        with torch.no_grad():
            table.weight[placeholder_ids] = init[spec.key].to(table.weight)
        te.requires_grad_(False)
        table.weight.requires_grad_(True)  # all other text-encoder params frozen
        te.train()
        tables.append(table)
        origs.append(table.weight.detach().clone())  # orig_embeds_params
    tb = tokenize([TEMPLATE.replace("[name]", NAME)] * bsz, host.tokenizer, {NAME: n})
    ids = tb.ids[:, 0].clone()
    for s in tb.slots:
        ids[s.row, s.pos:s.pos + n] = torch.tensor(placeholder_ids)
    ids = [with_padding(ids, spec.pad_id).to(dev) for spec in fam.encoders]
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type=fam.prediction_type)
    # diffusers takes the cumprod in fp32, ours in fp64: ~1e-6 apart, which alone changes the first gradient by
    # ~2e-4 (relative) on tiny-sd1. Timing does not care; the same ᾱ on both sides lets the check see the method.
    sched.alphas_cumprod = host.schedule.alphas_cumprod.clone()
    gen = torch.Generator("cpu").manual_seed(a.seed)  # the same draws as EmbeddingJob: noise, then timesteps
    hw = (latents.shape[-2] * host.latent_factor, latents.shape[-1] * host.latent_factor)

    def loss():
        noise = torch.randn(latents.shape, generator=gen).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (bsz,), generator=gen).to(dev)
        noisy = sched.add_noise(latents, noise, t)
        ctx, added = [], None
        for spec, te, i in zip(fam.encoders, host.components.text_encoders, ids):
            out = te(input_ids=i, output_hidden_states=True)
            h = out.last_hidden_state if spec.layer == -1 else out.hidden_states[spec.layer]
            if spec.layer != -1 and spec.final_norm:
                h = getattr(te, "text_model", te).final_layer_norm(h)
            ctx.append(h)
            if spec.pooled:
                time_ids = torch.tensor([[*hw, 0, 0, *hw]], dtype=torch.float32, device=dev).repeat(bsz, 1)
                added = {"text_embeds": out.text_embeds.to(wdt), "time_ids": time_ids}
        pred = unet(noisy.to(wdt), t, torch.cat(ctx, -1).to(wdt), added_cond_kwargs=added).sample
        target = noise if fam.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def restore():  # "make sure we don't update any embedding weights besides the newly added token"
        index_no_updates = torch.ones((vocab + n,), dtype=torch.bool)
        index_no_updates[min(placeholder_ids):max(placeholder_ids) + 1] = False
        with torch.no_grad():
            for table, orig in zip(tables, origs):
                table.weight[index_no_updates] = orig[index_no_updates]

    learned = lambda: {spec.key: tbl.weight[placeholder_ids].detach() for spec, tbl in zip(fam.encoders, tables)}
    return loss, [t.weight for t in tables], restore, learned


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5; ru_maxrss follows it); return the RSS (MiB) now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # no reset: fall back to the (monotonic) peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_step(loss_fn, params, after_step, a):
    """zero_grad, forward (autocast under fp16), backward (GradScaler under fp16), AdamW step, after_step."""
    fp16, dev = a.precision == "fp16", torch.device(a.device)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler(dev.type) if fp16 else None
    skipped = []  # per step: did the GradScaler skip it (inf/NaN gradients; it then lowers its scale)?

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=fp16):
            loss = loss_fn()
        (scaler.scale(loss.float()) if scaler else loss.float()).backward()
        if scaler:
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped.append(scaler.get_scale() < scale)
        else:
            opt.step()
        after_step()
        return float(loss.detach())
    return step, opt, skipped


def run_side(a) -> dict:
    from scal_sdt.host.standalone import StandaloneHost
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    # ours runs as our trainer does (frozen weights fp16 on CUDA); the reference keeps its text encoder fp32
    host = StandaloneHost(build_components(a.model), device=dev,
                          dtype=torch.float16 if a.precision == "fp16" and a.side == "ours" else torch.float32)
    r = a.resolution // host.latent_factor
    latents = torch.randn((a.batch, host.components.unet.config.in_channels, r, r),
                          generator=torch.Generator().manual_seed(a.seed)).to(dev)
    loss_fn, params, after_step, learned = (setup_ours if a.side == "ours" else setup_reference)(host, latents, a)
    step, opt, skipped = make_step(loss_fn, params, after_step, a)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    snap = lambda: {k: v.float().cpu().tolist() for k, v in learned().items()}
    sync()
    rss0 = _reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses, check = [], [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
        if i < CHECK_STEP:
            check.append(snap())
    state = 0
    for p in params:
        extra = [p.grad] + [v for v in opt.state.get(p, {}).values() if torch.is_tensor(v)]
        state += sum(x.numel() * x.element_size() for x in [p, *extra] if x is not None)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0) * 2**20)
    floor = []
    if a.side == "ours":  # the same first steps again, from the init nudged by one ulp (the model is untouched)
        loss_fn, params, after_step, learned = setup_ours(host, latents, a, nudge=True)
        step, _, _ = make_step(loss_fn, params, after_step, a)
        for _ in check:
            step()
            floor.append(snap())
    return {"s_per_step": statistics.median(times), "state_mb": state / 2**20, "peak_mb": peak / 2**20,
            "first_loss": losses[0], "check": check, "floor": floor, "skipped_in_check": sum(skipped[:CHECK_STEP])}


def child(a, side: str, model: str, precision: str) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--model", model, "--precision", precision, "--device", a.device]
    cmd += [f"--{k}={getattr(a, k)}" for k in ("resolution", "batch", "steps", "warmup", "vectors", "lr", "seed",
                                                    "threads")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{side} / {model} / {precision} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def combine(runs: list[dict]) -> dict:
    """The first run's check vectors; the median of each metric over the runs (every run's time kept)."""
    out = dict(runs[0], s_per_step_runs=[r["s_per_step"] for r in runs])
    out.update({k: statistics.median(r[k] for r in runs) for k in ("s_per_step", "state_mb", "peak_mb")})
    return out


def max_abs_diff(x: dict, y: dict) -> float:
    return max(float((torch.tensor(x[k]) - torch.tensor(y[k])).abs().max()) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="comma-separated: tiny-sd1,tiny-sd2,tiny-sdxl or checkpoint paths "
                                                 "(default tiny-sd1; with --real-sd1 alone: none)")
    p.add_argument("--real-sd1", action="store_true", help="also a full-size SD1 UNet + CLIP-L, random weights")
    p.add_argument("--resolution", type=int, default=64, help="pixels; latents are [B, 4, res/8, res/8]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vectors", type=int, default=1, help="placeholder vectors (reference: that many new tokens)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in each side (0: torch's default; "
                                                          "1 keeps times steady beside busy neighbours)")
    p.add_argument("--repeat", type=int, default=1, help="alternate ours/reference this many times; report medians "
                                                         "(steadier ratios on a busy machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", help="fp32, fp16 or auto (fp32, and fp16 too on CUDA)")
    p.add_argument("--json", metavar="OUT", help="write the results here")
    p.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.side:  # child: one side, one model, one precision
        print("RESULT " + json.dumps(run_side(a)), flush=True)
        return
    models = a.model.split(",") if a.model else ([] if a.real_sd1 else ["tiny-sd1"])
    models += ["real-sd1"] if a.real_sd1 else []
    cuda = a.device.startswith("cuda")
    precisions = (["fp32", "fp16"] if cuda else ["fp32"]) if a.precision == "auto" else a.precision.split(",")
    peak_name = "CUDA max allocated" if cuda else "peak RSS delta"
    print(f"TI step, {a.device}, batch {a.batch}, {a.resolution} px, {a.vectors} vector(s), {a.warmup} warm-up + "
          f"{a.steps} timed steps (median), x{a.repeat} run(s), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"state = trainable params + grads + AdamW state; peak = {peak_name}\n")
    print(f"{'model':<12}{'prec':<6}{'side':<11}{'s/step':>10}{'state MB':>12}{'peak MB':>10}{'first loss':>12}")
    results = []
    for model in models:
        for prec in precisions:
            runs = [(child(a, "ours", model, prec), child(a, "reference", model, prec)) for _ in range(a.repeat)]
            ours, ref = (combine([r[i] for r in runs]) for i in (0, 1))
            ratio = {k: (ours[k] / ref[k] if ref[k] else float("nan")) for k in ("s_per_step", "state_mb", "peak_mb")}
            checks = ours.pop("check"), ref.pop("check"), ours.pop("floor"), ref.pop("floor")
            vs_ref = [max_abs_diff(o, r) for o, r in zip(checks[0], checks[1])]
            floor = [max_abs_diff(o, f) for o, f in zip(checks[0], checks[2])]
            for side, r in (("ours", ours), ("reference", ref)):
                print(f"{model:<12}{prec:<6}{side:<11}{r['s_per_step']:>10.4f}{r['state_mb']:>12.4g}"
                      f"{r['peak_mb']:>10.1f}{r['first_loss']:>12.5f}")
            print(f"{'':<18}{'ours/ref':<11}{ratio['s_per_step']:>9.2f}x{ratio['state_mb']:>11.3g}x"
                  f"{ratio['peak_mb']:>9.3g}x")
            fmt = lambda xs: " ".join(f"{x:.2g}" for x in xs)
            print(f"{'':<18}placeholder max |ours - ref| after steps 1..{len(vs_ref)}: {fmt(vs_ref)}")
            print(f"{'':<18}float-noise floor |ours - ours from init + 1 ulp|: {fmt(floor)}")
            if prec == "fp16":
                print(f"{'':<18}steps skipped by the GradScaler among those: ours {ours['skipped_in_check']}, "
                      f"reference {ref['skipped_in_check']}")
            print()
            results.append({"model": model, "precision": prec, "ours": ours, "reference": ref, "ratio": ratio,
                            "max_abs_diff_vs_reference": vs_ref, "max_abs_diff_floor": floor})
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "side"},
                                            "peak": peak_name, "results": results}, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
