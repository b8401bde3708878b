"""Probe run by tests/test_webui_embeddings.py inside a REAL AUTOMATIC1111 WebUI's python (not collected by pytest).

Usage (cwd = the WebUI folder):  WEBUI_PYTHON webui_probe_embeddings.py SPEC.json

SPEC.json: {"data_dir": D, "embeddings_dir": E, "out": OUT.json,
            "cases": [{"id": str, "file": path, "expected_shape": int}, ...],
            "dir_pass_expected_shape": int}

It initialises the WebUI the way ``modules/initialize.py:imports()`` does, minus gradio/ldm/ui: ``modules.paths``,
``modules.safe`` (which rebinds ``torch.load`` to its restricted loader), ``shared_init.initialize()`` (cmd_opts,
opts, devices), ``modules.processing`` (import order the WebUI needs to avoid a circular import) and
``modules.textual_inversion.textual_inversion``. No checkpoint is loaded: ``shared.sd_model`` is a stub whose only
member is ``cond_stage_model.tokenize``, the one thing ``EmbeddingDatabase.register_embedding`` touches. Each case
then goes through the WebUI's own ``EmbeddingDatabase.load_from_file`` with ``expected_shape`` set, and one more pass
runs ``load_from_dir`` over the whole folder. The result (as the WebUI sees each embedding) is written to OUT.json.
"""
import contextlib
import io
import json
import os
import sys
import time

T0 = time.time()
with open(sys.argv[1], encoding="utf8") as f:
    SPEC = json.load(f)

# The WebUI parses sys.argv when its modules are imported (paths_internal, launch_utils, shared_cmd_options).
# --data-dir keeps config.json, cache, models/ and extensions/ out of the WebUI folder (and no user extension loads).
sys.argv = [sys.argv[0], "--data-dir", SPEC["data_dir"], "--embeddings-dir", SPEC["embeddings_dir"],
            "--use-cpu", "all", "--no-half", "--precision", "full", "--skip-torch-cuda-test", "--skip-version-check"]
sys.path.insert(0, os.getcwd())

import torch  # noqa: E402

from modules import paths  # noqa: E402,F401  (puts repositories/* on sys.path, like the WebUI)
from modules import safe  # noqa: E402  (rebinds torch.load = safe.load)
from modules import shared, shared_init  # noqa: E402

shared_init.initialize()
from modules import processing  # noqa: E402,F401  (must precede textual_inversion: circular imports otherwise)
from modules.textual_inversion import textual_inversion as ti  # noqa: E402

T_IMPORT = time.time() - T0


class _StubCond:
    @staticmethod
    def tokenize(texts):
        return [[ord(c) for c in t] for t in texts]


class _StubModel:
    cond_stage_model = _StubCond()


shared.sd_model = _StubModel()


def _tensors(vec):
    if isinstance(vec, dict):
        return {k: v.detach().cpu().float().tolist() for k, v in vec.items()}
    return {"*": vec.detach().cpu().float().tolist()}


def _describe(e):
    return {"name": e.name, "shape": e.shape, "vectors": e.vectors, "step": e.step, "sd_checkpoint": e.sd_checkpoint,
            "sd_checkpoint_name": e.sd_checkpoint_name, "hash": e.hash, "filename": e.filename,
            "values": _tensors(e.vec)}


def _run_case(case):
    db = ti.EmbeddingDatabase()
    db.expected_shape = case["expected_shape"]
    out, err = io.StringIO(), io.StringIO()
    res = {"id": case["id"], "file": case["file"], "expected_shape": case["expected_shape"], "error": None}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            db.load_from_file(case["file"], os.path.basename(case["file"]))
        except Exception as exc:  # the WebUI's load_from_dir would report and skip it
            res["error"] = f"{type(exc).__name__}: {exc}"
        if case["file"].lower().endswith((".pt", ".bin")):
            try:  # is the file itself readable by plain torch (i.e. a refusal is safe.py's doing)?
                safe.unsafe_torch_load(case["file"], map_location="cpu", weights_only=True)
                res["plain_torch_load_ok"] = True
            except Exception as exc:
                res["plain_torch_load_ok"] = f"{type(exc).__name__}: {exc}"
    res["stdout"], res["stderr"] = out.getvalue(), err.getvalue()
    res["registered"] = {n: _describe(e) for n, e in db.word_embeddings.items()}
    res["skipped"] = {n: _describe(e) for n, e in db.skipped_embeddings.items()}
    res["status"] = ("error" if res["error"] else "registered" if res["registered"]
                     else "skipped" if res["skipped"] else "ignored")
    return res


def main():
    result = {"torch_load_is_safe_load": torch.load is safe.load, "torch": torch.__version__,
              "disable_safe_unpickle": bool(shared.cmd_opts.disable_safe_unpickle),
              "embeddings_dir_opt": shared.cmd_opts.embeddings_dir, "import_s": round(T_IMPORT, 2),
              "cases": [_run_case(c) for c in SPEC["cases"]]}

    db = ti.EmbeddingDatabase()
    db.expected_shape = SPEC.get("dir_pass_expected_shape", -1)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        db.load_from_dir(ti.DirWithTextualInversionEmbeddings(SPEC["embeddings_dir"]))
    result["dir_pass"] = {"registered": sorted(db.word_embeddings), "skipped": sorted(db.skipped_embeddings),
                          "stderr": err.getvalue()}
    result["total_s"] = round(time.time() - T0, 2)
    with open(SPEC["out"], "w", encoding="utf8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    rc = 0
    try:
        main()
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # hashes.sha256 starts modules.cache's non-daemon writer thread, which waits 5 s before writing cache.json
    # (into the temp data dir); nothing else is pending, so don't wait for it.
    os._exit(rc)
