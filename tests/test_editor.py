"""The dataset editor's model: the filter language, bulk edits on the filtered set written to the caption files at
once, undo / redo, thumbnails made once, autocompletion from tag CSV files."""
from __future__ import annotations

import pytest
from PIL import Image

from scal_sdt.tagging.editor import Dataset, TagVocabulary, thumbnail
from scal_sdt.tagging.query import Caption, parse


def caption(*tags, tokens=10):
    return Caption({t.replace("_", " ") for t in tags}, tokens)


@pytest.mark.parametrize("query,expected", [
    ("long hair", True), ("long_hair", True), ("Long Hair", True), ("smile and long hair", True),
    ("smile, frown", False), ("smile or frown", True), ("not frown", True), ("not smile", False),
    ("long* and not (frown or grin*)", True), ("frown or smile and not long hair", False),
    ("tokens>5", True), ("tokens<=9", False), ("tokens=10", True), ("untagged", False), ("", True),
    ("blue_\\(sky\\)", True),
])
def test_filter_language(query, expected):
    assert parse(query)(caption("long hair", "smile", "blue (sky)")) is expected


@pytest.mark.parametrize("bad", ["a and", "(a or b", "a )", "or a", "not"])
def test_malformed_filters_are_refused(bad):
    with pytest.raises(ValueError, match="filter"):
        parse(bad)


def make(folder, captions):
    folder.mkdir(exist_ok=True)
    for i, text in enumerate(captions):
        Image.new("RGB", (40, 30), (i * 20 % 255, 50, 90)).save(folder / f"{i:03d}.png")
        if text is not None:
            (folder / f"{i:03d}.txt").write_text(text)
    return Dataset(folder)


def read(folder, i):
    return (folder / f"{i:03d}.txt").read_text()


def test_bulk_edits_on_the_filtered_set_undo_and_redo(tmp_path):
    data = tmp_path / "d"
    ds = make(data, ["1girl, smile, long_hair", "1girl, frown", "1boy, smile, smile", None])
    assert ds.frequency()["smile"] == 2 and ds.first_untagged() == 3
    smiling = ds.filter("smile")
    assert smiling == [0, 2]
    ds.add(smiling, "happy, smile", at_start=True)
    assert read(data, 0) == "happy, 1girl, smile, long_hair" and read(data, 2) == "happy, 1boy, smile, smile"
    assert read(data, 1) == "1girl, frown"  # outside the filter: untouched
    ds.replace(ds.filter("1girl"), "long hair", "very long hair")
    assert read(data, 0) == "happy, 1girl, smile, very long hair"
    ds.dedupe([2])
    assert read(data, 2) == "happy, 1boy, smile"
    ds.regex_replace(list(range(3)), r"^(\d)(girl|boy)$", r"\1 \2")
    assert read(data, 1) == "1 girl, frown"
    ds.remove(list(range(4)), "hap*")
    assert "happy" not in ds.frequency()
    ds.set_caption(3, "new, caption")
    assert read(data, 3) == "new, caption" and ds.first_untagged() is None
    for _ in range(6):
        assert ds.undo() is not None
    assert ds.undo() is None
    assert [read(data, i) for i in range(3)] == ["1girl, smile, long_hair", "1girl, frown", "1boy, smile, smile"]
    assert read(data, 3) == ""  # an undone new caption leaves an empty file, not a lost edit
    ds.redo()
    assert read(data, 0) == "happy, 1girl, smile, long_hair"
    reopened = Dataset(data)
    assert reopened.items[0].tags == ["happy", "1girl", "smile", "long_hair"]
    with pytest.raises(ValueError, match="regular expression"):
        ds.regex_replace([0], "(", "")


def test_token_count_filter_and_many_images(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    long_caption = ", ".join(f"tag{i}" for i in range(40))
    for i in range(300):
        Image.new("RGB", (8, 8)).save(data / f"{i:03d}.png")
        (data / f"{i:03d}.txt").write_text(long_caption if i % 100 == 0 else "short, caption")
    ds = Dataset(data)
    assert ds.filter("tokens>75") == [0, 100, 200]
    assert len(ds.filter("short and not tokens>75")) == 297


def test_thumbnails_are_made_once(tmp_path):
    image = tmp_path / "big.png"
    Image.new("RGB", (1200, 800), (10, 200, 30)).save(image)
    t1 = thumbnail(image, tmp_path / "cache")
    stamp = t1.stat().st_mtime_ns
    assert Image.open(t1).size == (256, 171)
    assert thumbnail(image, tmp_path / "cache") == t1 and t1.stat().st_mtime_ns == stamp
    Image.new("RGB", (1200, 800), (200, 0, 0)).save(image)  # the image changed: a new thumbnail
    assert thumbnail(image, tmp_path / "cache") != t1


def test_autocompletion_from_tagcomplete_and_tagger_csv(tmp_path):
    tc = tmp_path / "danbooru.csv"
    tc.write_text('1girl,0,5000000,"1girls,sole_female"\nlong_hair,0,3000000,longhair\nlong_sleeves,0,1000000,\n')
    wd = tmp_path / "selected_tags.csv"
    wd.write_text("tag_id,name,category,count\n1,general,9,10\n2,long_skirt,0,2000000\n")
    vocab = TagVocabulary()
    assert vocab.add_csv(tc) == 3 and vocab.add_csv(wd) == 2
    assert vocab.complete("long") == ["long hair", "long skirt", "long sleeves"]
    assert vocab.complete("long_s") == ["long skirt", "long sleeves"]
    assert vocab.complete("") == []
