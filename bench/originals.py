"""The original DreamArtist extension against our APT, inside one running AUTOMATIC1111 WebUI, on the toy world.

DreamArtist (7eu7d7/DreamArtist-sd-webui-extension, last commit 95b2d44f, 2023-01-05) no longer loads in A1111 1.8:
its UI script does ``from webui import wrap_gradio_gpu_call`` (the function moved to ``modules.call_queue`` in
2023), so the WebUI reports the error and shows no DreamArtist tab. Its training code (``scripts/dream_artist/
cptuning.py``) is unaffected; ``bench/peer_drivers/dreamartist`` is a bench-only extension that imports that code
unmodified from ``--dreamartist-dir`` and runs it through one API route (``POST /da-driver/train``), with the
arguments its Train tab would pass. Both extensions are linked into the bench's own WebUI data folder: nothing is
installed into the WebUI folder itself.

Same data (16 pictures of the held-out colour, pink, captioned with [name] where the colour goes, or one of them
with ``--images 1``), template (the caption alone), steps, batch, rate, vectors and inits, and CFG range in training
(DreamArtist's "lo-hi" is linear in t, our ``--cfg-schedule linear``; the negative side's prompt is the same line
with NAME-neg, our ``--neg-prompt mirror``; DreamArtist fills a template's [name] before [filewords], so its
copy of the captions has the name written in). Both pairs are judged the same way on our standalone host: 32 pictures
of "a large NAME SHAPE on a ... background" with NAME-neg as the negative prompt, at CFG 2 and 5, the toy judge's
colour accuracy (chance 1/12). Wall seconds per run are reported too (the same process, sides in turn).

    WEBUI_DIR=/work/hosts/a1111 WEBUI_PYTHON=/work/hosts/a1111-venv/bin/python PYTHONPATH=$PWD/extensions_builtin \\
        python bench/originals.py --dreamartist-dir /path/to/DreamArtist-sd-webui-extension --threads 1 --json da.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.webui.conftest: the WebUI launcher the tests use
sys.path.insert(0, str(REPO / "bench"))  # hf_clip, common
from common import HeldOutColourJudge, add_report_args, use_threads, write_json, write_model  # noqa: E402

DRIVER = REPO / "bench" / "peer_drivers" / "dreamartist"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webui-dir", default=os.environ.get("WEBUI_DIR"))
    ap.add_argument("--webui-python", default=os.environ.get("WEBUI_PYTHON"))
    ap.add_argument("--dreamartist-dir", required=True, help="a checkout of 7eu7d7/DreamArtist-sd-webui-extension")
    ap.add_argument("--aesthetic-dir", help="a checkout of AUTOMATIC1111/stable-diffusion-webui-aesthetic-gradients: "
                    "also try the original aesthetic gradients (an embedding of the 16 pictures, and a txt2img with "
                    "one of ours copied into its aesthetic_embeddings/ folder, named toyours)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", default="0.02")
    ap.add_argument("--vectors", type=int, default=1)
    ap.add_argument("--neg-vectors", type=int, default=4)
    ap.add_argument("--init-text", default="red")
    ap.add_argument("--neg-init-text", default="*")
    ap.add_argument("--cfg-scale", default="1.5-3.0", help="training CFG, lo-hi (linear in t on both sides)")
    ap.add_argument("--sides", default="dreamartist,ours")
    ap.add_argument("--seed", type=int, default=1)
    add_report_args(ap)
    a = ap.parse_args(argv)
    if not a.webui_dir or not a.webui_python:
        ap.error("--webui-dir and --webui-python (or WEBUI_DIR and WEBUI_PYTHON) are needed")
    threads = use_threads(a.threads)  # the WebUI's and the judging's
    from scal_sdt.toy_world.concepts import make_held_out_colour_set
    from tests.webui.conftest import start_webui

    sides = [s for s in a.sides.split(",") if s]
    results: dict = {"args": vars(a), "trained": {}}
    with tempfile.TemporaryDirectory(prefix="scal-originals-") as tmp:
        work = Path(tmp)
        models = work / "models"
        ckpt = write_model("toy", models)
        data = work / "data" / "pink"
        make_held_out_colour_set(data, 16, seed=5)
        for extra in sorted(data.glob("*"))[2 * a.images:]:  # an image and its caption per index
            extra.unlink()
        # DreamArtist reads a template NAME_filewords.txt and, for the negative side, NAME.txt beside it
        templates = work / "templates"
        templates.mkdir()
        (templates / "caption_filewords.txt").write_text("[filewords]\n", encoding="utf-8")
        (templates / "caption.txt").write_text("[name]\n", encoding="utf-8")
        extensions = [REPO, Path(a.dreamartist_dir), DRIVER]
        if a.aesthetic_dir:
            style = prepare_aesthetic(ckpt, work, Path(a.aesthetic_dir), work / "webui" / "data")
            extensions.append(Path(a.aesthetic_dir))
        env = {"DA_EXT_DIR": str(Path(a.dreamartist_dir).absolute()), **threads}
        server = start_webui(Path(a.webui_dir), Path(a.webui_python), work / "webui", models, ckpt,
                             extra_args=["--disable-safe-unpickle"],
                             extensions=extensions, env=env)
        try:
            log = server.log
            results["dreamartist_ui_loads"] = "wrap_gradio_gpu_call" not in log
            results["dreamartist_ui_error"] = next((line for line in log.splitlines()
                                                    if "wrap_gradio_gpu_call" in line), "")
            for side in sides:
                name = f"toypink{side[:2]}{os.getpid()}"
                if side == "dreamartist":  # it fills [name] before [filewords]: the name is written in instead
                    da_data = work / "data" / "dreamartist"
                    shutil.copytree(data, da_data)
                    for caption in da_data.glob("*.txt"):
                        caption.write_text(caption.read_text(encoding="utf-8").replace("[name]", name),
                                           encoding="utf-8")
                t = time.perf_counter()
                try:
                    if side == "dreamartist":
                        r = server.post("/da-driver/train", dict(
                            name=name, vectors=a.vectors, neg_vectors=a.neg_vectors, init_text=a.init_text,
                            neg_init_text=a.neg_init_text, lr=a.lr, batch_size=a.batch_size, data=str(da_data),
                            log_directory=str(work / "da-logs"), resolution=64, steps=a.steps,
                            template_file=str(templates / "caption_filewords.txt"), cfg_scale=f"{a.cfg_scale}:ln",
                            seed=a.seed), timeout=7200)
                        if "error" in r:
                            raise RuntimeError(r["error"] + "\n" + r.get("traceback", "")[-1500:])
                        files = (r["path"], r["neg_path"])
                    else:
                        job = server.post("/scal-sdt/v1/train/embedding", dict(
                            name=name, mode="apt", vectors=a.vectors, neg_vectors=a.neg_vectors,
                            init_text=a.init_text, neg_init_text=a.neg_init_text, lr=a.lr, batch_size=a.batch_size,
                            data=str(data), resolution=64, steps=a.steps, template="filewords",
                            cfg_scale=a.cfg_scale, cfg_schedule="linear", neg_prompt="mirror", seed=a.seed,
                            save_every=0, preview_every=0))
                        job = server.wait_job(job, timeout=7200)
                        if job["status"] != "finished":
                            raise RuntimeError(f"our job failed: {job.get('error')}")
                        pos = Path(job["result"]["path"])
                        files = (str(pos), str(pos.with_name(f"{name}-neg{pos.suffix}")))
                    results["trained"][side] = {"files": files, "seconds": time.perf_counter() - t}
                except Exception as e:  # noqa: BLE001 - a peer that cannot run is a row saying why
                    results["trained"][side] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
                print(f"[{side}] {results['trained'][side]}", flush=True)
            if a.aesthetic_dir:
                try:
                    run = compare_aesthetic(server, style, Path(a.aesthetic_dir))
                    results["aesthetic"] = dict(make=run["make"], scores=score_aesthetic(run))
                except Exception as e:  # noqa: BLE001 - reported, the other rows stay
                    import traceback

                    results["aesthetic"] = {"error": traceback.format_exc()[-3000:]}
                print(f"[aesthetic gradients] {json.dumps(results['aesthetic'], indent=1)}", flush=True)
        finally:
            server.stop()
        results["judged"] = judge(results["trained"]) if results["trained"] else {}  # the files are in `work`
    for side, r in results["judged"].items():
        print(f"| {side} | {r} |")
    write_json(a.json, results)
    return results


#: aesthetic-gradient settings compared: the original's defaults (weight 0.9, 5 steps, lr 1e-4) and a stronger one
AE_SETTINGS = [(0.9, 5, 1e-4), (0.5, 20, 1e-3)]


def prepare_aesthetic(ckpt: Path, work: Path, ag_dir: Path, webui_data: Path) -> Path:
    """Before the WebUI starts: the toy CLIP as a transformers CLIPModel in the checkpoint's text-encoder folder (the
    yaml's ``version``: the WebUI builds its text encoder from that config, the original extension loads the whole
    CLIP from it), the style pictures (a checkered background the captions do not name), and our embedding of
    them as ``toyours`` in both extensions' folders. Returns the pictures' folder."""
    from hf_clip import write_hf_clip
    from scal_sdt.aesthetic.config import AestheticEmbeddingConfig
    from scal_sdt.aesthetic.make import make_aesthetic_embedding
    from scal_sdt.clip_models import toy_clip_folder
    from scal_sdt.toy_world.concepts import make_unnamed_style_set

    folder = ckpt.with_suffix(".text_encoder")
    shutil.rmtree(folder, ignore_errors=True)
    write_hf_clip(toy_clip_folder(), folder)
    style = work / "data" / "checks"
    make_unnamed_style_set(style, 24, seed=1)
    result = make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(style), name="toyours", model="toy",
                                                               out=str(work / "ae"), overwrite=True, device="cpu"))
    ours = webui_data / "models" / "aesthetic_embeddings"
    for target in (ag_dir / "aesthetic_embeddings", ours):
        target.mkdir(parents=True, exist_ok=True)
        for path in result.paths:
            if target == ours or str(path).endswith(".pt"):
                shutil.copy(path, target / Path(path).name)
    return style


def compare_aesthetic(server, style: Path, ag_dir: Path) -> dict:
    """The original makes its embedding of the style pictures (``toyorig``); then 16 prompts are drawn plain, with
    the original's hook (its embedding, and ours ``toyours`` to separate the embedding from the gradient steps) and
    with ours, for each of :data:`AE_SETTINGS`; same seeds. Images come back as PNG bytes per variant."""
    from tests.webui.conftest import WebUIError

    out: dict = {"make": server.post("/da-driver/aesthetic-embedding", {"name": "toyorig", "folder": str(style)},
                                     timeout=600)}
    from scal_sdt.toy_world.quality import prompt_set, sentence

    triples = prompt_set(16, seed=31)
    variants = {"none": None}
    for w, steps, lr in AE_SETTINGS:
        variants[f"original w{w} s{steps} lr{lr:g}"] = {"Aesthetic embeddings": {
            "args": [w, steps, str(lr), False, "toyorig", "", 0.1, False]}}
        variants[f"original+our-emb w{w} s{steps} lr{lr:g}"] = {"Aesthetic embeddings": {
            "args": [w, steps, str(lr), False, "toyours", "", 0.1, False]}}
        variants[f"ours w{w} s{steps} lr{lr:g}"] = {"SCAL-SDT aesthetic gradients": {
            "args": [True, "toyours", w, steps, lr, False, 0.1, "", False, True, "None", 1.0]}}
    images: dict = {}
    for label, scripts in variants.items():
        images[label] = []
        try:
            for i, triple in enumerate(triples):
                payload = dict(prompt=sentence(*triple), steps=20, sampler_name="DDIM", cfg_scale=5, seed=100 + i)
                if scripts:
                    payload["alwayson_scripts"] = scripts
                t = time.perf_counter()
                pngs, info = server.txt2img(**payload)
                images[label].append((pngs[0], time.perf_counter() - t))
        except WebUIError as e:
            images[label] = f"failed: {str(e)[:1500]}"
        print(f"[aesthetic] {label}: {'ok' if isinstance(images[label], list) else images[label]}", flush=True)
    out["triples"] = triples
    out["images"] = images
    out["orig_embedding"] = str(ag_dir / "aesthetic_embeddings" / "toyorig.pt")
    out["ours_embedding"] = str(ag_dir / "aesthetic_embeddings" / "toyours.pt")
    return out


def score_aesthetic(run: dict) -> dict:
    """Per variant: the judge's colour accuracy (the content kept), the mean cosine of the pictures' toy-CLIP image
    embeddings to the style's (our embedding of the style pictures: how much of the look came through), and the
    mean seconds per picture; plus the cosine between the original's and our embedding of the same pictures."""
    import io

    import torch
    from PIL import Image

    from scal_sdt.aesthetic.make import mean_embedding
    from scal_sdt.clip_models import load_open_clip
    from scal_sdt.toy_world.build import JUDGE, PRETRAINED
    from scal_sdt.toy_world.judge import Judge

    clip = load_open_clip("toy", "cpu")
    judge_ = Judge.load(PRETRAINED / JUDGE)
    ours = torch.load(run["ours_embedding"], weights_only=True).float().reshape(1, -1)
    ours = ours / ours.norm()
    out: dict = {}
    if Path(run["orig_embedding"]).is_file():
        orig = torch.load(run["orig_embedding"], weights_only=True).float().reshape(1, -1)
        out["embedding_cosine_original_vs_ours"] = float((orig / orig.norm() * ours).sum())
    for label, items in run["images"].items():
        if isinstance(items, str):
            out[label] = {"error": items}
            continue
        pictures = [Image.open(io.BytesIO(png)).convert("RGB") for png, _ in items]
        said = judge_.predict(pictures)
        with torch.no_grad():
            feats = torch.cat([mean_embedding(clip, [im], 1, "cpu") for im in pictures])
        out[label] = {"colour": sum(p[1] == t[1] for p, t in zip(said, run["triples"])) / len(pictures),
                      "style_cosine": float((feats @ ours.t()).mean()),
                      "s_per_image": sum(t for _, t in items) / len(items)}
    return out


def judge(trained: dict) -> dict:
    judge_ = HeldOutColourJudge()
    out = {}
    for side, r in trained.items():
        if "error" in r:
            out[side] = {"error": r["error"][:300]}
            continue
        pos, neg = (judge_.vectors(f) for f in r["files"])
        emb = {"toypink": pos, "toypink-neg": neg}
        out[side] = {f"cfg{cfg:g}": judge_.colour("toypink", emb, negative="toypink-neg", cfg_scale=cfg)
                     for cfg in (2.0, 5.0)}
        out[side]["seconds"] = r["seconds"]
    return out


if __name__ == "__main__":
    main()
