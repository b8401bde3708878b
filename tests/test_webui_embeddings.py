"""Our embedding files, read by a REAL AUTOMATIC1111 WebUI's own code (not by our re-implementation in webui_rules.py).

Needs WEBUI_DIR (a WebUI checkout, e.g. v1.8.0) and WEBUI_PYTHON (its venv's python); skipped otherwise. We write the
files here with ``scal_sdt.textual_inversion.format``; ``tests/webui_probe_embeddings.py`` then runs in WEBUI_PYTHON
(cwd WEBUI_DIR), imports the WebUI's ``modules.safe`` (so ``torch.load`` is its restricted loader) and
``modules.textual_inversion.textual_inversion``, feeds every file to ``EmbeddingDatabase.load_from_file`` with the
family's ``expected_shape`` (and the folder to ``load_from_dir``) and reports what the WebUI registered, skipped or
refused, with the exact tensors it read.

    WEBUI_DIR=/work/webui WEBUI_PYTHON=/work/webui-venv/bin/python python -m pytest tests/test_webui_embeddings.py
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

PROBE = Path(__file__).with_name("webui_probe_embeddings.py")
PROBE_TIMEOUT_S = 180


def _webui_paths() -> tuple[Path, Path] | str:
    d, py = os.environ.get("WEBUI_DIR"), os.environ.get("WEBUI_PYTHON")
    if not d or not py:
        return "WEBUI_DIR and WEBUI_PYTHON are not set (a real AUTOMATIC1111 WebUI and its venv python are needed)"
    d_, py_ = Path(d), Path(py)
    if not (d_ / "modules" / "textual_inversion" / "textual_inversion.py").is_file():
        return f"WEBUI_DIR={d} is not a WebUI folder (no modules/textual_inversion/textual_inversion.py)"
    if not (py_.is_file() and os.access(py_, os.X_OK)):
        return f"WEBUI_PYTHON={py} is not an executable file"
    return d_, py_


_PATHS = _webui_paths()
pytestmark = pytest.mark.skipif(isinstance(_PATHS, str), reason=str(_PATHS))

SD1, SD2, SDXL = 768, 1024, 2048  # EmbeddingDatabase.expected_shape per family (SDXL: clip_l 768 + clip_g 1280)


def _values(n: int, width: int, base: float) -> torch.Tensor:
    # exact in float32 (multiples of 1/64, |x| < 2^14) and distinct per file: the WebUI's numbers must match exactly
    return ((torch.arange(n * width, dtype=torch.float64) - n * width / 2) / 64 + base).reshape(n, width).float()


# id -> (format, vectors, expected_shape); the file stem and the embedding name are "scal_<id>"
GOOD = {
    "sd1_st": ("safetensors", {"*": _values(2, 768, 1000)}, SD1),
    "sd1_pt": ("pt", {"*": _values(2, 768, 2000)}, SD1),
    "sd1_png": ("png", {"*": _values(2, 768, 3000)}, SD1),
    "sd1_png_edges": ("png", {"*": _values(2, 768, 3500)}, SD1),  # text chunk stripped: only the edge-hidden data
    "sd2_st": ("safetensors", {"*": _values(1, 1024, 4000)}, SD2),
    "sdxl_st": ("safetensors", {"clip_l": _values(2, 768, 5000), "clip_g": _values(2, 1280, 5500)}, SDXL),
    "sdxl_pt": ("pt", {"clip_l": _values(2, 768, 6000), "clip_g": _values(2, 1280, 6500)}, SDXL),
    "sdxl_png": ("png", {"clip_l": _values(2, 768, 7000), "clip_g": _values(2, 1280, 7500)}, SDXL),
}
CONTROL = "scal_zip_control"  # a .pt in torch's default (zip) format: the WebUI's safe.py must refuse it
CONTROL_VALUES = _values(2, 768, 9000)
STEP, CKPT, CKPT_NAME = 123, "0123456789ab", "tiny-test.safetensors"
# (case id, file id, expected_shape): the width check must put a file of the wrong width into skipped_embeddings
WRONG_WIDTH = [("sd1_at_1024", "sd1_st", SD2), ("sd2_at_768", "sd2_st", SD1), ("sdxl_at_1024", "sdxl_st", SD2)]


def _write_files(emb_dir: Path, staging: Path) -> dict[str, Path]:
    from scal_sdt.textual_inversion.format import Embedding, save_embedding

    files = {}
    for fid, (fmt, vectors, _) in GOOD.items():
        name = f"scal_{fid}"
        emb = Embedding(name=name, vectors=vectors, step=STEP, sd_checkpoint=CKPT, sd_checkpoint_name=CKPT_NAME,
                        meta={"note": "written by tests/test_webui_embeddings.py"})
        if fid == "sd1_png_edges":
            written = save_embedding(emb, staging / name, fmt)
            with Image.open(written) as im:  # re-save the pixels only: no tEXt chunks left
                im.load()
                assert "sd-ti-embedding" in getattr(im, "text", {})
                target = emb_dir / written.name
                im.copy().save(target, format="PNG")
            with Image.open(target) as im:
                assert not getattr(im, "text", {}), "the stripped PNG still has text chunks"
            files[fid] = target
        else:
            files[fid] = save_embedding(emb, emb_dir / name, fmt)
        assert files[fid].name.startswith(name + "."), files[fid]
    control = emb_dir / f"{CONTROL}.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": CONTROL_VALUES}, "name": CONTROL,
                "step": 1, "sd_checkpoint": None, "sd_checkpoint_name": None}, control)  # default = zip format
    files["control"] = control
    return files


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    webui_dir, webui_python = _PATHS
    root = tmp_path_factory.mktemp("webui_emb")
    emb_dir, staging, data_dir = root / "embeddings", root / "staging", root / "data"
    for d in (emb_dir, staging, data_dir):
        d.mkdir()
    files = _write_files(emb_dir, staging)

    cases = [{"id": fid, "file": str(files[fid]), "expected_shape": GOOD[fid][2]} for fid in GOOD]
    cases.append({"id": "control", "file": str(files["control"]), "expected_shape": SD1})
    cases += [{"id": cid, "file": str(files[fid]), "expected_shape": shape} for cid, fid, shape in WRONG_WIDTH]
    out = root / "result.json"
    spec = root / "spec.json"
    spec.write_text(json.dumps({"data_dir": str(data_dir), "embeddings_dir": str(emb_dir), "out": str(out),
                                "cases": cases, "dir_pass_expected_shape": -1}), encoding="utf8")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "COMMANDLINE_ARGS",
                                                          "IGNORE_CMD_ARGS_ERRORS", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               SD_WEBUI_CACHE_FILE=str(data_dir / "cache.json"), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.time()
    try:
        proc = subprocess.run([str(webui_python), str(PROBE), str(spec)], cwd=webui_dir, env=env,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"the WebUI probe did not finish in {PROBE_TIMEOUT_S} s; "
                    f"stderr tail:\n{tail[-3000:]}")
    wall = time.time() - t0
    if proc.returncode != 0 or not out.is_file():
        pytest.fail(f"the WebUI probe failed (rc={proc.returncode}):\n--- stdout\n{proc.stdout[-3000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    result = json.loads(out.read_text(encoding="utf8"))
    result["wall_s"] = round(wall, 2)
    result["by_id"] = {c["id"]: c for c in result["cases"]}
    result["files"] = files
    print(f"\nWebUI probe: {wall:.1f} s wall (imports {result['import_s']} s), WebUI torch {result['torch']}")
    return result


def _explain(case: dict) -> str:
    return (f"{case['id']} ({Path(case['file']).name}, expected_shape {case['expected_shape']}): status "
            f"{case['status']}, error {case['error']}\nWebUI stderr:\n{case['stderr'][-4000:]}")


def test_probe_runs_webui_safe_loader(webui):
    assert webui["torch_load_is_safe_load"], "modules.safe did not replace torch.load inside the WebUI"
    assert not webui["disable_safe_unpickle"]


@pytest.mark.parametrize("fid", list(GOOD))
def test_registered_with_exact_values(webui, fid):
    fmt, vectors, shape = GOOD[fid]
    case = webui["by_id"][fid]
    name = f"scal_{fid}"
    assert case["status"] == "registered", _explain(case)
    assert list(case["registered"]) == [name], _explain(case)
    e = case["registered"][name]
    assert e["shape"] == shape
    assert e["vectors"] == next(iter(vectors.values())).shape[0]
    assert sorted(e["values"]) == sorted(vectors)
    for key, want in vectors.items():
        got = torch.tensor(e["values"][key], dtype=torch.float32)
        assert got.shape == want.shape, (key, got.shape, want.shape)
        assert torch.equal(got, want), f"{name}[{key}]: max |diff| {float((got - want).abs().max())}"
    path = webui["files"][fid]
    assert e["filename"] == str(path)
    assert e["hash"] == hashlib.sha256(path.read_bytes()).hexdigest()  # what feeds the infotext "TI hashes"
    if fmt in ("pt", "png") and "*" in vectors:  # the WebUI reads these fields from A1111-layout dicts only
        assert (e["step"], e["sd_checkpoint"], e["sd_checkpoint_name"]) == (STEP, CKPT, CKPT_NAME)
    assert case["stderr"].count("***") == 0, _explain(case)


def test_modern_zip_pt_is_refused_by_safe_py(webui):
    case = webui["by_id"]["control"]
    assert not case["registered"] and not case["skipped"], _explain(case)
    assert case["status"] == "error", _explain(case)
    assert "Error verifying pickled file" in case["stderr"], _explain(case)
    assert "bad file inside" in case["stderr"], _explain(case)
    # the file itself is fine: plain torch reads it, so the refusal is safe.py's zip-member check
    assert case["plain_torch_load_ok"] is True, case["plain_torch_load_ok"]


@pytest.mark.parametrize("cid,fid,shape", WRONG_WIDTH)
def test_wrong_width_is_skipped(webui, cid, fid, shape):
    case = webui["by_id"][cid]
    name = f"scal_{fid}"
    assert case["status"] == "skipped", _explain(case)
    assert list(case["skipped"]) == [name] and not case["registered"]
    assert case["skipped"][name]["shape"] == GOOD[fid][2] != shape


def test_load_from_dir_registers_all_but_the_control(webui):
    d = webui["dir_pass"]
    assert d["registered"] == sorted(f"scal_{fid}" for fid in GOOD), d["stderr"][-4000:]
    assert d["skipped"] == []
    assert f"Error loading embedding {CONTROL}.pt" in d["stderr"]
    assert d["stderr"].count("Error loading embedding") == 1, d["stderr"][-4000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
