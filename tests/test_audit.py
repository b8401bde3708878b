"""`scal-sdt audit`: a data set with one of every planted problem has each found, a clean one reports nothing, and
no file of the folder changes."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from scal_sdt.audit.config import AuditConfig
from scal_sdt.audit.run import audit_folder
from scal_sdt.cli import main
from scal_sdt.toy_world.world import make_dataset

TRIGGER = "sks"


def clean_set(folder, n=8):
    """Toy pictures with tag captions that all start with the trigger word."""
    make_dataset(folder, n, seed=3, px=96)
    for caption in sorted(folder.glob("*.txt")):
        caption.write_text(f"{TRIGGER}, {caption.read_text().strip()}\n")
    return folder


def fingerprint(folder) -> dict:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def planted_set(folder):
    clean_set(folder)
    shutil.copyfile(folder / "00000.png", folder / "copy.png")  # the same bytes
    shutil.copyfile(folder / "00000.txt", folder / "copy.txt")
    with Image.open(folder / "00001.png") as im:  # resized and re-encoded
        im.convert("RGB").resize((88, 88), Image.LANCZOS).save(folder / "smaller.jpg", quality=85)
    shutil.copyfile(folder / "00001.txt", folder / "smaller.txt")
    data = (folder / "00002.png").read_bytes()
    (folder / "broken.png").write_bytes(data[:len(data) // 3])  # cut short
    (folder / "00003.txt").write_text(f"{TRIGGER}, " + ", ".join(f"very detailed tag number {i}" for i in range(30)))
    (folder / "00004.txt").write_text("star, red, white_background\n")  # no trigger
    (folder / "00005.txt").write_text("SKS, circle, blue\n")  # the trigger spelled otherwise
    (folder / "00006.txt").unlink()  # no caption
    Image.new("RGB", (20, 24), "red").save(folder / "tiny.png")
    (folder / "tiny.txt").write_text(f"{TRIGGER}, red\n")
    return folder


def paths_of(report, kind):
    return [sorted(p.rsplit("/", 1)[-1] for p in f.paths) for f in report.problems if f.kind == kind]


def test_every_planted_problem_is_found_and_nothing_changes(tmp_path):
    data = planted_set(tmp_path / "data")
    before = fingerprint(data)
    cfg = AuditConfig(dir=str(data), resolution=64, min_side=32, trigger=TRIGGER, out=str(tmp_path / "audits"),
                      data_source="drawn by me")
    report = audit_folder(cfg)
    assert fingerprint(data) == before
    assert paths_of(report, "duplicate") == [["00000.png", "copy.png"]]
    assert paths_of(report, "near-duplicate") == [["00001.png", "smaller.jpg"]]
    assert paths_of(report, "corrupt") == [["broken.png"]]
    assert paths_of(report, "long caption") == [["00003.png"]]
    assert paths_of(report, "missing trigger") == [["00004.png"], ["00006.png"]]  # 00006's caption is its file name
    assert paths_of(report, "inconsistent trigger") == [["00005.png"]]
    assert paths_of(report, "no caption") == [["00006.png"]]
    assert paths_of(report, "tiny") == [["tiny.png"]]
    assert sum(report.buckets.values()) == 11 and report.tags[TRIGGER] == 8
    saved = json.loads((tmp_path / "audits" / "data-audit.json").read_text())
    assert saved["data_source"] == "drawn by me" and saved["problem_counts"]["duplicate"] == 1
    with Image.open(tmp_path / "audits" / "data-audit.png") as picture:
        assert picture.size[0] > 500


def test_a_clean_folder_reports_nothing_and_the_trigger_is_found(tmp_path):
    data = clean_set(tmp_path / "data")
    report = audit_folder(AuditConfig(dir=str(data), resolution=64, method="lora", out=str(tmp_path / "audits")))
    assert report.problems == [], report.summary()
    assert report.trigger == TRIGGER and "first tag of 8 of 8" in report.trigger_from
    assert "no problems found" in report.summary()
    assert report.suggestion.repeats == 19 and 500 <= report.suggestion.steps <= 3000


def test_the_command_line_prints_the_report_and_refuses_to_write_into_the_folder(tmp_path, capsys):
    data = clean_set(tmp_path / "data", 4)
    assert main(["audit", str(data), "--resolution", "64", "--out", str(tmp_path / "a"), "--method", "embedding"]) == 0
    out = capsys.readouterr().out
    assert "4 image(s), no problems found" in out and "suggested for embedding" in out
    assert main(["audit", str(data), "--out", str(data / "reports")]) == 2
    assert "inside the data set folder" in capsys.readouterr().err
    assert not (data / "reports").exists()


@pytest.mark.parametrize("body", [{"dir": ""}, {"dir": "x", "method": "nope"}, {"dir": "x", "resolution": 8}])
def test_bad_options_are_refused_by_name(body):
    from scal_sdt.config import from_dict

    with pytest.raises(ValueError):
        from_dict(AuditConfig, body)


def test_the_forms_check_data_button_audits_the_demo_set_for_its_method(tmp_path, monkeypatch):
    from scal_sdt.ui.data_check import check_data

    monkeypatch.chdir(tmp_path)
    text, picture = check_data("embedding", {"data": "demo", "resolution": 0, "batch_size": 8,
                                             "data_source": "the toy world"}, native_resolution=lambda: 64)
    assert "16 image(s), no problems found" in text and "[name]" in text and "the toy world" in text
    assert Path(picture).is_file()
    text, picture = check_data("lora", {"data": "", "instance_data": str(planted_set(tmp_path / "d"))},
                               native_resolution=lambda: 64)
    assert "duplicate" in text and "corrupt" in text and picture.endswith(".png")
