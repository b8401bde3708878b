"""bench/kohya.py's bench-only pieces: the driver that lends kohya sd-scripts a checkpoint's sizes reads them right off
the file, the step clock counts optimiser steps, and (when a checkout of sd-scripts and its python are given in
SD_SCRIPTS_DIR / KOHYA_PYTHON) what sd-scripts builds from the toy model computes what our host's models do."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DRIVERS = REPO / "bench" / "peer_drivers"


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_driver_reads_sd1_sizes_off_the_toy_and_tiny_checkpoints(tmp_path):
    from scal_sdt.host.checkpoint import save_checkpoint
    from scal_sdt.host.standalone import load_components
    from scal_sdt.host.toy import toy_checkpoint

    driver = _module(DRIVERS / "kohya_sd1_sizes.py")
    toy = driver.read_sizes(str(toy_checkpoint()))
    assert toy["unet"] == dict(channels=64, mult=[1, 1, 1, 1], res_blocks=1, attention=[1, 2, 4], context=64, heads=8)
    assert toy["vae"] == dict(ch=32, mult=[1, 1, 2, 2], res_blocks=1, z=4, scale=pytest.approx(0.36204))
    assert toy["text"] == dict(hidden_size=64, num_hidden_layers=3, intermediate_size=256, num_attention_heads=2,
                               projection_dim=64)
    tiny = driver.read_sizes(str(save_checkpoint(load_components("tiny-sd1"), tmp_path / "tiny.safetensors")))
    assert tiny["unet"]["mult"] == [1, 2, 2, 2] and tiny["unet"]["channels"] == 32 and tiny["unet"]["context"] == 32
    assert tiny["text"]["num_hidden_layers"] == 2 and tiny["text"]["num_attention_heads"] == 2


def test_step_clock_stamps_every_optimiser_step(tmp_path):
    clock = _module(DRIVERS / "step_clock.py")
    path = tmp_path / "steps.txt"
    clock.install(str(path))
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    for _ in range(4):
        p.square().sum().backward()
        opt.step()
    stamps = [tuple(map(float, line.split())) for line in path.read_text().splitlines()]
    assert len(stamps) >= 4  # the hook is global: other optimisers in this process would add lines too
    walls = [s[0] for s in stamps[-4:]]
    assert walls == sorted(walls)


@pytest.mark.skipif(not (os.environ.get("SD_SCRIPTS_DIR") and os.environ.get("KOHYA_PYTHON")),
                    reason="needs a checkout of kohya-ss/sd-scripts (SD_SCRIPTS_DIR) and its venv's python "
                           "(KOHYA_PYTHON)")
def test_sd_scripts_builds_the_toy_model_we_run(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    kohya = _module(REPO / "bench" / "kohya.py")
    results = kohya.main(["--sd-scripts", os.environ["SD_SCRIPTS_DIR"], "--kohya-python", os.environ["KOHYA_PYTHON"],
                          "--check-load", "--threads", "1"])
    for name, r in results["check_load"].items():
        assert r["max_abs"] > 0.1 and r["max_abs_diff"] < 1e-4 * r["max_abs"], (name, r)
