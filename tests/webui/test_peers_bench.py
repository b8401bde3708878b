"""bench/peers.py --quick against the real WebUI: the WebUI's own TI and hypernetwork trainers and ours (through our
API in the same WebUI, and on the command line) all train and are measured. Nothing is asserted about time: the
ratios are reported, not asserted (bench/README.md has the table)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_peers_quick_measures_every_side(webui_install, tmp_path):
    webui_dir, python = webui_install
    spec = importlib.util.spec_from_file_location("peers", REPO / "bench" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    out = tmp_path / "peers.json"
    results = peers.main(["--quick", "--threads", "1", "--webui-dir", str(webui_dir), "--webui-python", str(python),
                          "--json", str(out)])
    assert out.is_file()
    assert set(results["rows"]) == {"ti", "hn"}
    for kind, rows in results["rows"].items():
        for side in ("webui", "cli"):  # ours always runs
            assert "error" not in rows[side], (kind, side, rows[side])
            assert math.isfinite(rows[side]["s_step"]) and len(rows[side]["runs"]) == 1
        # the WebUI's own trainer: measured, or (a WebUI without the GroupedBatchSampler fix) a reason
        builtin = rows["built-in"]
        assert ("error" in builtin and builtin["error"]) or math.isfinite(builtin["s_step"]), builtin
        if "error" not in builtin:
            assert math.isfinite(rows["webui"]["time_ratio"])
