"""The shipped toy world models (toy_world/pretrained/): each measured on fresh data, each a test that can fail.

The numbers asserted here are the README's quality table, with some margin for CPU float noise."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from scal_sdt.host.checkpoint import load_checkpoint
from scal_sdt.host.standalone import load_components, load_host
from scal_sdt.toy_world.build import CHECKPOINT, CLIP_DIR, JUDGE, MANIFEST, PRETRAINED, TAGGER_DIR
from scal_sdt.toy_world.clip_model import load_clip, retrieval_accuracy, text_encoder_from_clip
from scal_sdt.toy_world.judge import Judge, sample_labelled
from scal_sdt.toy_world.pool import render_pool
from scal_sdt.toy_world.quality import prompt_accuracy, prompt_set
from scal_sdt.toy_world.tagger import onnx_f1

FRESH_SEED = 424242  # none of the build's seeds


@pytest.fixture(scope="module")
def judge():
    return Judge.load(PRETRAINED / JUDGE)


@pytest.fixture(scope="module")
def toy_host():
    return load_host("toy", device="cpu")


def test_shipped_files_match_the_manifest_and_stay_small():
    manifest = json.loads((PRETRAINED / MANIFEST).read_text())
    total = 0
    for name, entry in manifest["files"].items():
        path = PRETRAINED / name
        assert path.is_file(), name
        assert path.stat().st_size == entry["bytes"], name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        total += entry["bytes"]
    # the aim is 20 MB; the 49,408-row token table (3.2 MB in fp16) is in both the checkpoint and the CLIP
    assert total < 24 * 2**20, f"shipped weights are {total / 2**20:.1f} MB"


def test_judge_names_shape_and_colour_of_fresh_scenes(judge):
    scenes, images = sample_labelled(400, FRESH_SEED)
    acc = judge.accuracy(scenes, images)
    assert acc["shape"] >= 0.95 and acc["colour"] >= 0.97, acc


def test_tagger_f1_on_fresh_scenes():
    scenes, images = sample_labelled(300, FRESH_SEED + 1)
    assert onnx_f1(PRETRAINED / TAGGER_DIR, scenes, images) >= 0.9


def test_clip_loads_with_open_clip_and_matches_text_to_images():
    clip = load_clip(PRETRAINED / CLIP_DIR)
    assert retrieval_accuracy(clip, render_pool(256, FRESH_SEED), 256) >= 0.6
    # the diffusion model's text encoder is this CLIP's text tower, weight for weight
    encoder = text_encoder_from_clip(clip)
    shipped = load_checkpoint(PRETRAINED / CHECKPOINT).text_encoders[0]
    for (name, a), (_, b) in zip(sorted(encoder.state_dict().items()), sorted(shipped.state_dict().items())):
        assert torch.equal(a.half().float(), b), name


def test_toy_vae_reconstructs_fresh_scenes(toy_host):
    from scal_sdt.toy_world.vae import reconstruction_error

    assert reconstruction_error(toy_host.components.vae, render_pool(128, FRESH_SEED + 2), 128) <= 0.11  # 0.082


def test_toy_model_draws_the_colour_and_shape_the_prompt_asks(toy_host, judge):
    acc = prompt_accuracy(toy_host, judge, prompt_set(48, FRESH_SEED), seed=FRESH_SEED)
    # "a large red star on a white background": chance is 1/12 for the colour and 1/8 for the shape; measured
    # 0.94 and 0.25 here (the toy UNet before its pool of mostly large shapes on white: about 0.19 for the shape)
    assert acc["colour"] >= 0.75 and acc["shape"] >= 0.2, acc


def test_toy_is_a_builtin_name_everywhere():
    components = load_components("toy")
    assert components.name == "toy" and components.family.name == "sd1"
    assert components.source.endswith(CHECKPOINT)
