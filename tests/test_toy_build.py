"""`scal-sdt make-toy-world`: the recipe that made the shipped toy models, run at a tiny size."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from scal_sdt import cli
from scal_sdt.host.checkpoint import load_checkpoint
from scal_sdt.toy_world.build import CHECKPOINT, CLIP_DIR, MANIFEST, TAGGER_DIR, ToyWorldConfig, make_toy_world
from scal_sdt.toy_world.clip_model import load_clip
from scal_sdt.toy_world.tagger import INPUT_NAME, OUTPUT_NAME, RATINGS

SMALL = dict(pool=64, clip_steps=2, vae_steps=2, unet_steps=2, judge_steps=2, tagger_steps=2, eval_prompts=2,
             eval_images=16)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    manifest = make_toy_world(ToyWorldConfig(out=str(out), **SMALL), log=lambda _: None)
    return out, manifest


def test_rebuild_is_bit_for_bit_identical(small_world):
    out, manifest = small_world
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert cli.main(["make-toy-world", "--out", str(out), "--check", *flags]) == 0
    rebuilt = json.loads((out / "rebuild" / MANIFEST).read_text())
    assert rebuilt["files"] == manifest["files"]
    assert set(manifest["files"]) >= {CHECKPOINT, f"{CLIP_DIR}/open_clip_model.safetensors",
                                      f"{TAGGER_DIR}/model.onnx", f"{TAGGER_DIR}/selected_tags.csv"}


def test_a_changed_file_is_reported(small_world, tmp_path, capsys):
    out, _ = small_world
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][CHECKPOINT]["sha256"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert cli.main(["make-toy-world", "--out", str(copy), "--check", *flags]) == 1
    assert CHECKPOINT in capsys.readouterr().out


def test_outputs_load_where_users_load_them(small_world):
    import onnxruntime as ort

    out, _ = small_world
    components = load_checkpoint(out / CHECKPOINT)
    assert components.family.name == "sd1" and components.text_encoders[0].config.hidden_size == 64
    clip = load_clip(out / CLIP_DIR)  # open_clip's own local-dir loader
    assert clip.visual.image_size == (64, 64)
    # the WD14 signature: NHWC 0-255 BGR in, one sigmoid per CSV row out, the 4 ratings first
    session = ort.InferenceSession(str(out / TAGGER_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == INPUT_NAME and inp.shape[1:] == [64, 64, 3] and outp.name == OUTPUT_NAME
    with open(out / TAGGER_DIR / "selected_tags.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows[:4]] == list(RATINGS) and {r["category"] for r in rows[:4]} == {"9"}
    probs = session.run(None, {INPUT_NAME: np.zeros((3, 64, 64, 3), np.float32)})[0]
    assert probs.shape == (3, len(rows)) and ((probs >= 0) & (probs <= 1)).all()
