"""`scal-sdt choose`: the guide's "how to choose" as a table of cases, each with its method, presets, and a memory
estimate that fits the card it was chosen for."""
import json

import pytest

from scal_sdt.cli import main
from scal_sdt.library.chooser import choose, memory_preset

# goal, images, VRAM (GB), family -> method, options that must be chosen, words the reason must hold
CASES = [
    # TI composes what the model can already draw
    ("subject", 15, 8, "sd1", "textual-inversion", {"preset": "8gb"}, "can already draw"),
    ("subject", 20, 24, "sdxl", "textual-inversion", {"preset": "24gb"}, "can already draw"),
    # APT learns a concept from a single image
    ("subject", 1, 12, "sd1", "apt", {"mode": "apt", "apt_preset": "dreamartist"}, "single image"),
    # hypernetworks suit styles
    ("style", 40, 8, "sd1", "hypernetwork", {"preset": "8gb"}, "drawing styles"),
    ("style", 200, 24, "sd2", "hypernetwork", {"steps": 2000}, "drawing styles"),
    # aesthetic gradients for the look, with a hypernetwork for an artist's look
    ("aesthetics", 30, 6, "sd1", "aesthetic-embedding", {}, "good pictures"),
    # DreamBooth adds what the model cannot draw, given the memory
    ("concept", 10, 12, "sd1", "dreambooth", {"steps": 1000}, "cannot draw"),
    ("concept", 30, 24, "sdxl", "dreambooth", {"steps": 2000}, "cannot draw"),
    # ... and a LoRA where DreamBooth does not fit the card
    ("concept", 10, 6, "sd1", "lora", {"network": "lora", "steps": 1000}, "DreamBooth needs"),
    ("concept", 3, 6, "sdxl", "lora", {"steps": 400}, "DreamBooth needs"),
]


@pytest.mark.parametrize("goal,images,vram,family,method,options,words", CASES)
def test_the_guides_cases(goal, images, vram, family, method, options, words):
    c = choose(goal, images, vram, family)
    assert c.method == method
    assert options.items() <= c.options.items()
    assert words in c.reason
    assert 0 < c.memory_gb <= vram and c.minutes > 0
    assert c.command and c.tab


def test_memory_and_time_follow_the_card_and_family():
    assert [memory_preset(v) for v in (4, 6, 7.9, 8, 11, 12, 16, 24, 80)] == \
        ["6gb", "6gb", "6gb", "8gb", "8gb", "12gb", "12gb", "24gb", "24gb"]
    small, large = choose("concept", 10, 10, "sd1"), choose("concept", 10, 40, "sd1")
    assert small.memory_gb < large.memory_gb and small.minutes > large.minutes  # the fastest setting that fits
    assert choose("subject", 10, 12, "sdxl").memory_gb > choose("subject", 10, 12, "sd1").memory_gb
    aesthetics = choose("aesthetics", 30, 8, "sd1")
    assert "hypernetwork" in aesthetics.also and aesthetics.minutes < 1
    tiny = choose("subject", 10, 4, "sd1")
    assert tiny.options["preset"] == "6gb" and "below the smallest memory preset" in tiny.warnings[0]


def test_bad_input_is_named():
    for args, word in ((("art", 3, 8, "sd1"), "goal"), (("style", 3, 8, "sd3"), "family"),
                       (("style", 0, 8, "sd1"), "images")):
        with pytest.raises(ValueError, match=word):
            choose(*args)


def test_cli(capsys):
    assert main(["choose", "--goal", "concept", "--images", "10", "--vram-gb", "6", "--family", "sdxl", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["method"] == "lora" and answer["options"]["preset"] == "6gb"
    assert main(["choose", "--goal", "style", "--images", "40", "--vram-gb", "8", "--family", "sd1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hypernetwork: ") and "scal-sdt train-hypernetwork --preset 8gb --steps 1000" in out
    with pytest.raises(SystemExit):
        main(["choose", "--goal", "art"])  # argparse names the choices


def test_the_wizard_fills_the_chosen_form():
    gr = pytest.importorskip("gradio")
    from scal_sdt.library.chooser import choose
    from scal_sdt.ui.chooser_tab import answer_html, family_hint, fill
    from scal_sdt.ui.standalone import build_app
    from scal_sdt.ui_config import UiConfig

    targets = [("scal_sdt_ti", "preset"), ("scal_sdt_ti", "mode"), ("scal_sdt_ti", "apt_preset"),
               ("scal_sdt_hn", "preset"), ("scal_sdt_lora", "rank")]
    apt = choose("subject", 1, 8, "sd1")
    updates = fill(apt, targets)
    assert [u.get("value") for u in updates] == ["8gb", "apt", "dreamartist", None, None]
    assert "Train → SCAL-SDT Embedding (mode apt)" in answer_html(apt)
    assert family_hint("tiny-sdxl") == "sdxl" and family_hint("toy") == "sd1"
    app = build_app(UiConfig(model="tiny-sd2"))
    by_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert {"scal_sdt_choose_goal", "scal_sdt_choose_go", "scal_sdt_choose_answer"} <= set(by_id)
    assert by_id["scal_sdt_choose_family"].value == "sd2"


def test_each_answer_says_which_numbers_are_measured_and_which_scaled():
    from scal_sdt.library.chooser import choose
    from scal_sdt.ui.chooser_tab import answer_html

    sd1 = choose("concept", 20, 24, "sd1")  # DreamBooth, fp32 AdamW: a measured row
    assert sd1.method == "dreambooth" and sd1.scaled == [] and "17.4 GB, 0.136 s" in sd1.measured[0]
    sd2 = choose("concept", 20, 12, "sd2")  # SD2 DreamBooth: scaled from SD1's row, never run on a GPU
    assert sd2.method == "dreambooth" and "SD1's" in sd2.measured[0]
    assert any("SD2 DreamBooth was never measured" in m for m in sd2.scaled)
    assert "scaled, not measured: SD2 (768 px)" in sd2.text()
    low = choose("subject", 10, 6, "sdxl")  # the 6gb preset streams SDXL's UNet: lowvram
    assert any("lowvram" in m and "never measured" in m for m in low.scaled)
    assert any("sdxl from SD1 by the pixel count" in m for m in low.scaled)
    plain = choose("subject", 10, 12, "sd1")  # 12gb on SD1: batch 4, no checkpointing
    assert not any("lowvram" in m or "checkpointing" in m for m in plain.scaled + plain.measured)
    assert "scaled, not measured" in answer_html(low) and "measured: a Textual Inversion step" in answer_html(low)
