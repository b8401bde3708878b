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


def test_peers_quality_quick_judges_every_side(webui_install, tmp_path):
    """--quality --quick: every side trains a few steps on the toy checkpoint, and each file is scored the same
    way (the judge's colour accuracy for TI, the held-out loss for hypernetworks), the untrained start beside them."""
    webui_dir, python = webui_install
    spec = importlib.util.spec_from_file_location("peers", REPO / "bench" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    results = peers.main(["--quality", "--quick", "--threads", "1", "--webui-dir", str(webui_dir),
                          "--webui-python", str(python)])
    ti, hn = results["quality"]["ti"], results["quality"]["hn"]
    assert 0.0 <= ti["before"]["colour"] <= 0.2, ti  # the init vector of "red" draws no pink
    assert 0.0 < hn["before"]["loss"] < 1.0, hn
    for side in ("webui", "cli"):  # ours always runs
        assert 0.0 <= ti[side]["colour"] <= 1.0 and ti[side]["steps"] == 3, ti[side]
        assert math.isfinite(hn[side]["loss"]), hn[side]
        # three steps of a hypernetwork initialised near zero barely move the loss
        assert abs(hn[side]["loss"] - hn["before"]["loss"]) < 0.05, hn
    for rows in (ti, hn):  # the WebUI's own trainer: scored, or (without the GroupedBatchSampler fix) a reason
        assert rows["built-in"].get("error") or "colour" in rows["built-in"] or "loss" in rows["built-in"], rows
