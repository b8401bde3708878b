"""The SCAL-SDT Library tab in the real WebUI: built, with its "use" button wired to txt2img's prompt (the WebUI
builds txt2img before the extensions' tabs, so the prompt box is captured in time)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("tiny-sd1"), extensions=[REPO], name="webui-scal-sdt")


def test_the_library_tab_is_on_the_page_and_use_is_wired(server):
    config = server.get("/config")
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    for part in ("folders", "table", "item", "render", "gallery", "search", "kind", "fits_only"):
        assert f"scal_sdt_lib_{part}" in by_id, part
    assert by_id["scal_sdt_lib_use"]["props"].get("visible", True) is True
    folders = by_id["scal_sdt_lib_folders"]["props"]["value"]
    assert "Stable-diffusion" in folders  # the WebUI's own folders, the checkpoints' among them
