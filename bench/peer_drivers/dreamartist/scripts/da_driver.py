"""Bench-only driver (not part of SCAL-SDT): an API route that runs the ORIGINAL DreamArtist extension's training
code (scripts/dream_artist/cptuning.py, unmodified, from DA_EXT_DIR) inside this WebUI. The extension's own UI
script no longer imports in A1111 1.8, so its training code is called directly."""
import datetime
import os
import sys
import time
import traceback

import torch
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


class _StandIn(torch.nn.Module):
    """What DreamArtist's U-Net layer list takes from a block it expects (``.norm``, ``.proj_in``, ``.proj_out``,
    ``[i]``); never called."""

    def __init__(self):
        super().__init__()
        self.norm, self.proj_in, self.proj_out = (torch.nn.Linear(1, 1) for _ in range(3))

    def __getitem__(self, i):
        return _StandIn()


def _padded(cls):
    """``cls`` whose ``[i]`` past the end gives a stand-in; iteration and ``len`` (the forward pass) unchanged."""
    def getitem(self, i):
        try:
            return cls.__getitem__(self, i)
        except IndexError:
            return _StandIn()

    return type(f"Padded{cls.__name__}", (cls,), {"__getitem__": getitem})


class sd1_block_indexes:
    """DreamArtist lists the layers its optional U-Net training would train by SD1's block indexes
    (``input_blocks[1..6]``, ``output_blocks[7..11]``, a SpatialTransformer at ``[1]`` of each), even with Train
    U-Net off. A smaller SD1-layout UNet (the toy model: one ResBlock per level) lacks some of them: for the run,
    indexing past a block's end gives a stand-in (unused: Train U-Net is off); the forward pass is unchanged."""

    def __init__(self, unet):
        self.objects = [unet.input_blocks, unet.output_blocks, *unet.input_blocks, *unet.output_blocks]

    def __enter__(self):
        self.classes = [type(o) for o in self.objects]
        for o, cls in zip(self.objects, self.classes):
            o.__class__ = _padded(cls)

    def __exit__(self, *exc):
        for o, cls in zip(self.objects, self.classes):
            o.__class__ = cls


def train(body: dict = Body(...)):
    try:
        cp = _cptuning()
        name = body["name"]
        # what its tab's users already had: the embeddings folder, and the run's log folder (it writes
        # hyper_param.json there but creates it only when saving images or embeddings during the run)
        os.makedirs(shared.cmd_opts.embeddings_dir, exist_ok=True)
        log_directory = body.get("log_directory", "dream_artist")
        os.makedirs(os.path.join(log_directory, datetime.datetime.now().strftime("%Y-%m-%d"), name), exist_ok=True)
        cp.create_embedding(name, int(body.get("vectors", 3)), True, init_text=body.get("init_text", "*"))
        cp.create_embedding(name + "-neg", int(body.get("neg_vectors", 6)), True,
                            init_text=body.get("neg_init_text", "*"))
        sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
        shared.state.begin(job="da-driver")
        t = time.perf_counter()
        res = body.get("resolution", 64)
        with sd1_block_indexes(shared.sd_model.model.diffusion_model):
            _, filename = cp.train_embedding(
                name, int(body.get("seed", 1)), str(body.get("lr", "0.003")), int(body.get("batch_size", 1)),
                body["data"], log_directory, res, res, int(body["steps"]), 0, 0,
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
