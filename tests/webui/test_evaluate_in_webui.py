"""Evaluate and audit inside the real WebUI (toy checkpoint): an embedding run trained through our API saves its
steps; POST /scal-sdt/v1/evaluate compares them with the WebUI's own txt2img (an aesthetic embedding as a grid axis
too), suggests one and keeps it (the WebUI's embedding file becomes that step); POST /scal-sdt/v1/audit finds a
planted duplicate and a missing caption; bad requests are 422s; every training tab has "Check data" and the
"Evaluate saved steps" panel."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

@pytest.fixture(scope="module")
def run(toy_server, tmp_path_factory):
    """A 4-step embedding run saving every 2 steps, trained through the API: (its job's result, its data folder)."""
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    data = tmp_path_factory.mktemp("evaluate-data")
    make_held_out_colour_set(data, 4, seed=5)
    job = toy_server.post("/scal-sdt/v1/train/embedding", {
        "name": "evalpink", "data": str(data), "init_text": "red", "template": "filewords", "steps": 4,
        "save_every": 2, "batch_size": 2, "lr": "0.05", "resolution": 64, "preview_every": 0, "overwrite": True})
    job = toy_server.wait_job(job, timeout=900)
    assert job["status"] == "finished", job
    return job["result"], data


def test_evaluate_compares_the_saved_steps_with_the_webuis_txt2img_and_keeps_one(toy_server, run, reds):
    result, _ = run
    run_dir = Path(result["run_dir"])
    assert run_dir.is_relative_to(toy_server.data_dir) and (run_dir / "run.json").is_file()
    body = {"run_dir": str(run_dir), "prompts": "a large [name] star on a white background", "images": 1,
            "sample_steps": 4, "clip": "toy", "aesthetic": reds, "aesthetic_weights": "0,0.5", "aesthetic_steps": 10,
            "aesthetic_lr": 1e-3}
    job = toy_server.wait_job(toy_server.post("/scal-sdt/v1/evaluate", body), timeout=900)
    assert job["status"] == "finished", job
    evaluation = job["result"]
    steps = [r["step"] for r in evaluation["rows"]]
    assert steps == [2, 4] and evaluation["suggested"] in steps and evaluation["reason"]
    assert all(r["fidelity"] is not None and r["leakage"] is not None for r in evaluation["rows"])
    scores = json.loads(Path(evaluation["files"]["scores"]).read_text())
    assert scores["aesthetic"] == reds and scores["aesthetic_weights"] == [0.0, 0.5]
    assert Path(evaluation["files"]["grid"]).is_file()
    assert Path(evaluation["files"]["page"]).parent == run_dir / "evaluation"
    assert "[SCAL-SDT] aesthetic embedding reds:" in toy_server.log  # the 0.5 rows went through the accordion's hook
    # keep step 2: the WebUI's embedding file becomes the saved step's
    final = Path(result["path"])
    saved = run_dir / "embeddings" / "evalpink-2.safetensors"
    job = toy_server.wait_job(toy_server.post("/scal-sdt/v1/evaluate", {"run_dir": str(run_dir), "keep": "2",
                                                                "steps": "2", "images": 1, "sample_steps": 2,
                                                                "clip": "none"}), timeout=900)
    assert job["status"] == "finished", job
    assert Path(job["result"]["kept"]) == final and final.read_bytes() == saved.read_bytes()


def test_bad_evaluate_requests_are_422s(toy_server, run, tmp_path):
    from .conftest import WebUIError

    with pytest.raises(WebUIError, match="422.*run.json"):
        toy_server.post("/scal-sdt/v1/evaluate", {"run_dir": str(toy_server.data_dir)})
    with pytest.raises(WebUIError, match="422.*outside the WebUI"):
        toy_server.post("/scal-sdt/v1/evaluate", {"run_dir": str(tmp_path)})
    with pytest.raises(WebUIError, match="422.*keep"):
        toy_server.post("/scal-sdt/v1/evaluate", {"run_dir": run[0]["run_dir"], "keep": "best"})


def test_audit_through_the_api_finds_a_planted_duplicate_and_a_missing_caption(toy_server, run, tmp_path):
    _, data = run
    folder = tmp_path / "audited"
    shutil.copytree(data, folder)
    shutil.copyfile(folder / "00000.png", folder / "copy.png")  # the same bytes, no caption
    job = toy_server.wait_job(toy_server.post("/scal-sdt/v1/audit", {"dir": str(folder), "method": "embedding",
                                                             "resolution": 64}), timeout=900)
    assert job["status"] == "finished", job
    counts = job["result"]["problem_counts"]
    assert counts.get("duplicate") == 1 and counts.get("no caption") == 1, counts
    # the uncaptioned copy lacks the trigger too; the training pictures themselves have no problem
    assert all("copy.png" in json.dumps(found) for found in job["result"]["problems"]), job["result"]["problems"]


def test_every_training_tab_has_check_data_and_the_evaluate_panel(toy_server):
    ids = {c.get("props", {}).get("elem_id") for c in toy_server.get("/config")["components"]}
    for prefix in ("scal_sdt_ti", "scal_sdt_hn", "scal_sdt_db", "scal_sdt_lora"):
        for part in ("check", "check_picture", "data_source", "evaluate_start", "evaluate_grid", "evaluate_aesthetic",
                     "keep", "keep_step"):
            assert f"{prefix}_{part}" in ids, (prefix, part)
    assert "evaluate" in toy_server.get("/scal-sdt/v1/options")
