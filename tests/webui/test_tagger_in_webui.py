"""The Tagger inside the real WebUI: its own top-level tab built from the config, POST /scal-sdt/v1/tag tags a
folder in the WebUI's Python (onnxruntime beside the WebUI's protobuf 3.20), bad input gets a 422 with the reason,
unload frees the model."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from .conftest import WebUIError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(webui_server, webui_install, tiny_checkpoint):
    python = webui_install[1]
    if subprocess.run([str(python), "-c", "import onnxruntime"], capture_output=True).returncode:
        pytest.skip("the WebUI's Python has no onnxruntime (our install.py adds it at the WebUI's start; the tests "
                    "start it with --skip-install)")
    return webui_server(tiny_checkpoint("toy"), extensions=[REPO], name="webui-scal-sdt-toy")


def test_the_tagger_tab_is_built_from_the_config(server):
    from scal_sdt.tagging.config import TagConfig

    ids = {c.get("props", {}).get("elem_id") for c in server.get("/config")["components"]}
    assert {"scal_sdt_tag_start", "scal_sdt_tag_stop", "scal_sdt_tag_unload"} <= ids
    for f in dataclasses.fields(TagConfig):
        assert f"scal_sdt_tag_{f.name}" in ids, f.name
    labels = {c.get("props", {}).get("label") for c in server.get("/config")["components"]}
    assert "SCAL-SDT Tagger" in labels  # the top-level tab


def test_tagging_a_folder_through_the_api(server, tmp_path_factory):
    from scal_sdt.toy_world.world import make_dataset

    folder = tmp_path_factory.mktemp("tag-data")
    make_dataset(folder, 16, seed=8, style="tags")
    truth = {p.stem: p.read_text().strip() for p in folder.glob("*.txt")}
    for p in folder.glob("*.txt"):
        p.unlink()
    (folder / "broken.png").write_bytes(b"no")
    job = server.post("/scal-sdt/v1/tag", {"dir": str(folder), "model": "toy", "cache_dir": "",
                                           "underscores_to_spaces": False})
    job = server.wait_job(job, timeout=120)
    assert job["status"] == "finished", job
    result = job["result"]
    assert result["written"] == 16 and [f["path"] for f in result["failed"]] == [str(folder / "broken.png")]
    assert "CPUExecutionProvider" in result["provider"]
    right = sum(set((folder / f"{s}.txt").read_text().split(", ")) == set(t.split(", ")) for s, t in truth.items())
    assert right >= 10, right  # whole captions exactly right (the toy tagger's F1 is ~0.97)
    assert server.post("/scal-sdt/v1/tag/unload")["unloaded"] >= 1


def test_bad_tagging_requests_get_the_reason(server, tmp_path):
    with pytest.raises(WebUIError, match="422.*dir: folder does not exist"):
        server.post("/scal-sdt/v1/tag", {"dir": str(tmp_path / "nope"), "model": "toy"})
    with pytest.raises(WebUIError, match="422.*unknown option"):
        server.post("/scal-sdt/v1/tag", {"dir": str(tmp_path), "thresh": 0.3})
    with pytest.raises(WebUIError, match="422.*regular expression"):
        server.post("/scal-sdt/v1/tag", {"dir": str(tmp_path), "exclude_regex": "("})


def test_blip_without_its_weights_fails_with_the_reason(server, tmp_path_factory):
    """Offline and without models/BLIP, the WebUI's own BLIP cannot load: the job says so instead of hanging or
    writing half captions."""
    from scal_sdt.toy_world.world import make_dataset

    folder = tmp_path_factory.mktemp("blip-data")
    make_dataset(folder, 2, seed=1)
    for p in folder.glob("*.txt"):
        p.unlink()
    job = server.post("/scal-sdt/v1/tag", {"dir": str(folder), "model": "toy", "cache_dir": "", "blip": True})
    job = server.wait_job(job, timeout=180)
    assert job["status"] == "failed" and "BLIP could not load" in job["error"], job
    assert not list(folder.glob("*.txt"))


def test_cleaning_through_the_api(server, tmp_path_factory):
    """Duplicates found and moved in the WebUI's Python (OpenCV beside its numpy)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("clean-data")
    Image.new("RGB", (48, 48), (10, 200, 10)).save(folder / "a.png")
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "b.txt").write_text("green")
    job = server.post("/scal-sdt/v1/clean", {"dir": str(folder), "duplicates": True, "move_flagged": True,
                                             "text": True})
    job = server.wait_job(job, timeout=120)
    assert job["status"] == "finished", job
    assert job["result"]["duplicate_groups"] == [[str(folder / "a.png"), str(folder / "b.png")]]
    assert (folder / "flagged" / "duplicate" / "b.txt").read_text() == "green"
    with pytest.raises(WebUIError, match="422.*nothing to do"):
        server.post("/scal-sdt/v1/clean", {"dir": str(folder)})


def test_clip_terms_in_the_webuis_python(server, tmp_path_factory):
    """CLIP interrogation with the toy CLIP through the WebUI's own (older) open_clip."""
    from scal_sdt.toy_world.world import COLOURS, make_dataset

    folder = tmp_path_factory.mktemp("clip-data")
    make_dataset(folder, 4, seed=12)
    for p in folder.glob("*.txt"):
        p.unlink()
    colours = [c for c in COLOURS if c != "pink"]
    job = server.post("/scal-sdt/v1/tag", {"dir": str(folder), "model": "toy", "cache_dir": "", "clip_model": "toy",
                                           "clip_terms": ", ".join(colours), "clip_top": 1,
                                           "exclude": ", ".join(colours)})
    job = server.wait_job(job, timeout=120)
    assert job["status"] == "finished", job
    assert all(p.read_text().split(", ")[-1] in colours for p in folder.glob("*.txt"))
