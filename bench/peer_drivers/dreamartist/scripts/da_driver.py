"""Bench-only driver (not part of SCAL-SDT): an API route that runs the ORIGINAL DreamArtist extension's training
code (scripts/dream_artist/cptuning.py, unmodified, from DA_EXT_DIR) inside this WebUI. The extension's own UI
script no longer imports in A1111 1.8, so its training code is called directly."""
import os
import sys
import time
import traceback

from fastapi import Body

from modules import script_callbacks, sd_hijack, shared


def _cptuning():
    da = os.environ["DA_EXT_DIR"]
    sys.path.insert(0, da)
    try:
        from scripts.dream_artist import cptuning
    finally:
        sys.path.remove(da)
    return cptuning


def train(body: dict = Body(...)):
    try:
        cp = _cptuning()
        name = body["name"]
        cp.create_embedding(name, int(body.get("vectors", 3)), True, init_text=body.get("init_text", "*"))
        cp.create_embedding(name + "-neg", int(body.get("neg_vectors", 6)), True,
                            init_text=body.get("neg_init_text", "*"))
        sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
        shared.state.begin(job="da-driver")
        t = time.perf_counter()
        res = body.get("resolution", 64)
        _, filename = cp.train_embedding(
            name, int(body.get("seed", 1)), str(body.get("lr", "0.003")), int(body.get("batch_size", 1)),
            body["data"], body.get("log_directory", "dream_artist"), res, res, int(body["steps"]), 0, 0,
            body["template_file"], False, False, "", "", 20, 0, 7.0, -1, res, res,
            str(body.get("cfg_scale", "3.0")), "", True, bool(body.get("att_map", False)), bool(body.get("rec", False)),
            float(body.get("rec_loss_w", 1.0)), float(body.get("neg_lr_w", 1.0)), float(body.get("ema_w", 1.0)),
            int(body.get("ema_rep_step", 1)), float(body.get("ema_w_neg", 1.0)), int(body.get("ema_rep_step_neg", 1)),
            float(body.get("adam_beta1", 0.9)), float(body.get("adam_beta2", 0.999)), False,
            int(body.get("accumulation_steps", 1)), False, "0.000005")
        took = time.perf_counter() - t
        shared.state.end()
        return {"path": filename, "neg_path": filename[:-3] + "-neg.pt", "seconds": took}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def on_app_started(demo, app):
    app.add_api_route("/da-driver/train", train, methods=["POST"])


script_callbacks.on_app_started(on_app_started)


def aesthetic_embedding(body: dict = Body(...)):
    """The original aesthetic-gradients extension's "Create aesthetic embedding" (``generate_imgs_embd``), when it
    is installed beside this driver."""
    module = sys.modules.get("aesthetic_clip")
    if module is None:
        return {"error": "the aesthetic-gradients extension is not loaded"}
    try:
        return {"result": module.generate_imgs_embd(body["name"], body["folder"], int(body.get("batch_size", 8)))}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def on_app_started_aesthetic(demo, app):
    app.add_api_route("/da-driver/aesthetic-embedding", aesthetic_embedding, methods=["POST"])


script_callbacks.on_app_started(on_app_started_aesthetic)
