"""The tagger: each family's preprocessing and tag list, thresholds and MCut, caption rules, the folder pipeline
(corrupt files, interrupt, cache, fixed batches, ensembles) and the toy tagger's quality through it all."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from onnx_taggers import (deepdanbooru_folder, probe_folder, reference_wd14_prepare, tag_mapping_folder,  # noqa: E402
                          wd14_folder)
from scal_sdt.tagging import tags as T  # noqa: E402
from scal_sdt.tagging.config import TagConfig  # noqa: E402
from scal_sdt.tagging.families import FAMILIES  # noqa: E402
from scal_sdt.tagging.model import Tagger, TaggerPool  # noqa: E402
from scal_sdt.tagging.preprocess import prepare  # noqa: E402
from scal_sdt.tagging.run import tag_folder  # noqa: E402
from scal_sdt.training.report import Reporter  # noqa: E402

NAMES = ["general", "sensitive", "questionable", "explicit", "hatsune_miku", "saber", "long_hair", "smile",
         "twintails", "^_^", "blue_(sky)", "solo"]
CATS = [9, 9, 9, 9, 4, 4, 0, 0, 0, 0, 0, 0]
SCORES = [0.9, 0.08, 0.01, 0.01, 0.95, 0.5, 0.97, 0.6, 0.30, 0.4, 0.36, 0.1]


def rgba_image(w=37, h=23):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    a[:5, :, 3] = 0  # a transparent band
    return Image.fromarray(a, "RGBA")


def make_images(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (20 + i % 7, 30, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def cfg(folder, model, tmp_path, **kw):
    return TagConfig(dir=str(folder), model=str(model), cache_dir=str(tmp_path / "cache"), **kw)


def test_wd14_preprocess_matches_the_reference_pixel_for_pixel():
    image = rgba_image()
    for side in (32, 37, 448):
        ours = prepare(image, side, FAMILIES["wd14"].preprocess)
        ref = reference_wd14_prepare(image, side)
        assert ours.shape == (side, side, 3) and ours.dtype == np.float32
        assert np.array_equal(ours, ref)


def test_each_family_gets_its_own_input(tmp_path):
    """A probe model returns the mean of each input channel: a pure red image must arrive as BGR 0-255 NHWC (WD14),
    RGB 0-1 NHWC (DeepDanbooru), RGB [-1, 1] NCHW (tag_mapping), CLIP-normalised RGB NCHW (JoyTag)."""
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    expected = {"selected_tags.csv": (False, [0, 0, 255]), "tags.txt": (False, [1, 0, 0]),
                "tag_mapping.json": (True, [1, -1, -1])}
    for tags_file, (nchw, want) in expected.items():
        tagger = Tagger(str(probe_folder(tmp_path / tags_file, tags_file, nchw)))
        row = prepare(red, tagger.side, tagger.family.preprocess)
        got = tagger.session.run(None, {tagger.input_name: row[None]})[0][0]
        assert np.allclose(got, want, atol=1e-5), (tags_file, got)
    joy = FAMILIES["joytag"].preprocess
    row = prepare(red, 16, joy)
    assert row.shape == (3, 16, 16)
    assert np.allclose(row[:, 0, 0], [(1 - joy.mean[0]) / joy.std[0], -joy.mean[1] / joy.std[1],
                                      -joy.mean[2] / joy.std[2]], atol=1e-5)


def test_thresholds_rating_and_categories(tmp_path):
    tagger = Tagger(str(wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES)))
    scores = tagger.run(np.zeros((2, tagger.side, tagger.side, 3), np.float32))
    assert scores.shape == (2, len(NAMES)) and np.allclose(scores[1], SCORES, atol=1e-5)
    chosen = T.select(scores[0], tagger.labels, T.TagRules(general_threshold=0.35, rating=True))
    assert list(chosen) == ["general", "hatsune_miku", "long_hair", "smile", "^_^", "blue_(sky)"]
    assert "saber" not in chosen  # character below 0.85
    alpha = T.select(scores[0], tagger.labels, T.TagRules(general_threshold=0.35, sort="alphabetical"))
    assert list(alpha) == ["hatsune_miku", "^_^", "blue_(sky)", "long_hair", "smile"]


def test_mcut_cuts_at_the_largest_gap():
    p = np.array([0.97, 0.95, 0.6, 0.58, 0.5, 0.45])
    assert T.mcut_threshold(p) == pytest.approx((0.95 + 0.6) / 2)
    from scal_sdt.tagging.families import Labels

    labels = Labels(NAMES, CATS)
    chosen = T.select(np.array(SCORES), labels, T.TagRules(mcut_general=True, mcut_character=True))
    # general scores sorted: .97 .6 .4 .36 .3 .1 -> largest gap .97/.6; characters .95 .5 -> cut between
    assert list(chosen) == ["hatsune_miku", "long_hair"]


def test_caption_rules():
    chosen = {"long_hair": 0.97, "^_^": 0.9, "blue_(sky)": 0.8, "solo": 0.7, "smile": 0.6}
    rules = T.TagRules(exclude=["solo"], add=["mychar"], first=["smile"], replace=T.parse_replace("long hair=very_long_hair"))
    assert T.caption_tags(chosen, rules) == ["smile", "mychar", "very long hair", "^_^", r"blue \(sky\)"]
    weighted = T.caption_tags({"long_hair": 0.971}, T.TagRules(weights=True, underscores_to_spaces=False))
    assert weighted == ["(long_hair:0.97)"]
    assert T.caption_tags(chosen, T.TagRules(exclude_regex="^s")) == ["long hair", "^_^", r"blue \(sky\)"]
    with pytest.raises(ValueError, match="regular expression"):
        T.TagRules(exclude_regex="(")
    with pytest.raises(ValueError, match="old=new"):
        T.parse_replace("nonsense")


def test_merging_with_an_existing_caption_never_repeats_a_tag():
    new = ["smile", "long hair"]
    assert T.merge_caption("", new, "ignore") == "smile, long hair"
    assert T.merge_caption("a, long_hair", new, "ignore") == "a, long_hair"
    assert T.merge_caption("a, long_hair", new, "overwrite") == "smile, long hair"
    assert T.merge_caption("a, long_hair", new, "append") == "a, long_hair, smile"
    assert T.merge_caption("a, Long Hair", new, "prepend") == "smile, long hair, a"


def test_folder_run_writes_captions_and_reports_corrupt_files(tmp_path):
    model = wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES)
    data = tmp_path / "data"
    make_images(data, 10)
    (data / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (data / "sub").mkdir()
    make_images(data / "sub", 2, start=50)
    (data / "000.txt").write_text("handwritten, smile")
    report = tag_folder(cfg(data, model, tmp_path))
    assert report.images == 13 and report.kept == 1 and report.written == 11
    assert [p for p, _ in report.failed] == [str(data / "broken.jpg")]
    assert "not an image file" in report.failed[0][1]
    assert (data / "000.txt").read_text() == "handwritten, smile"  # existing=ignore loses nothing
    assert (data / "001.txt").read_text() == r"hatsune miku, long hair, smile, ^_^, blue \(sky\)"
    assert (data / "sub" / "050.txt").exists()
    assert report.frequency["long hair"] == 11
    appended = tag_folder(cfg(data, model, tmp_path, existing="append", recursive=False))
    assert (data / "000.txt").read_text() == r"handwritten, smile, hatsune miku, long hair, ^_^, blue \(sky\)"
    assert appended.unchanged == 9 and appended.written == 1


class StopAfter(Reporter):
    def __init__(self, steps):
        self.steps, self.seen = steps, 0

    def step(self, info):
        self.seen += 1

    def should_stop(self):
        return self.seen >= self.steps


def test_interrupt_keeps_what_was_written_and_the_cache_skips_it_next_time(tmp_path):
    model = wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES)
    data = tmp_path / "data"
    make_images(data, 40)
    first = tag_folder(cfg(data, model, tmp_path, batch_size=4, workers=2), StopAfter(2))
    written = sorted(data.glob("*.txt"))
    assert first.interrupted and 8 <= len(written) < 40
    assert all(p.read_text().startswith("hatsune miku, long hair") for p in written)
    second = tag_folder(cfg(data, model, tmp_path, batch_size=4, workers=2))
    assert second.kept == len(written) and second.written == 40 - len(written)
    for p in data.glob("*.txt"):
        p.unlink()
    third = tag_folder(cfg(data, model, tmp_path, batch_size=4))
    assert third.inferred == 0 and third.from_cache == 40 and third.written == 40  # every score from the cache
    Image.new("RGB", (9, 9), (1, 2, 3)).save(data / "005.png")  # changed content is run again
    fourth = tag_folder(cfg(data, model, tmp_path, existing="overwrite"))
    assert fourth.inferred == 1 and fourth.from_cache == 39


@pytest.mark.parametrize("batch", [1, 3])
def test_fixed_batch_models_run_padded_and_sliced(tmp_path, batch):
    model = wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES, batch=batch)
    tagger = Tagger(str(model))
    assert tagger.fixed_batch == batch
    data = tmp_path / "data"
    make_images(data, 7)
    report = tag_folder(cfg(data, model, tmp_path, batch_size=5))
    assert report.written == 7 and not report.failed
    assert len({p.read_text() for p in data.glob("*.txt")}) == 1


def test_deepdanbooru_and_tag_mapping_families_and_ensembles(tmp_path):
    dd = deepdanbooru_folder(tmp_path / "dd", ["1girl", "smile", "hatsune_miku", "rating:safe"],
                             [0.9, 0.2, 0.9, 0.99], characters=["hatsune_miku"])
    tm = tag_mapping_folder(tmp_path / "tm", ["1girl", "smile", "blue_eyes"], ["general", "general", "general"],
                            [0.8, 0.7, 0.1])
    assert Tagger(str(dd)).family.name == "deepdanbooru" and Tagger(str(tm)).family.name == "tag-mapping"
    data = tmp_path / "data"
    make_images(data, 3)
    tag_folder(cfg(data, dd, tmp_path, rating=True))
    assert (data / "000.txt").read_text() == "rating:safe, hatsune miku, 1girl"
    tag_folder(cfg(data, tm, tmp_path, existing="overwrite"))
    assert (data / "000.txt").read_text() == "1girl, smile"  # logits went through a sigmoid
    tag_folder(cfg(data, f"{dd}+{tm}", tmp_path, existing="overwrite"))
    assert (data / "000.txt").read_text() == "hatsune miku, 1girl, smile"
    tag_folder(cfg(data, f"{dd}+{tm}", tmp_path, existing="overwrite", ensemble="intersection"))
    assert (data / "000.txt").read_text() == "1girl"


def test_unknown_model_and_provider_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download SmilingWolf/wd-vit-tagger-v3"):
        Tagger("wd-vit-tagger-v3")
    model = wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES)
    with pytest.raises(ValueError, match="not in this onnxruntime"):
        Tagger(str(model), provider="coreml")
    (model / "selected_tags.csv").write_text("tag_id,name,category,count\n0,a,0,1\n")
    with pytest.raises(ValueError, match="gives 12 scores but selected_tags.csv lists 1"):
        Tagger(str(model))


def test_pool_reuses_and_unloads(tmp_path):
    model = str(wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES))
    pool = TaggerPool(idle_seconds=0)
    a = pool.get(model)
    assert pool.get(model) is a and len(pool.loaded()) == 1
    assert pool.unload() == 1 and pool.loaded() == []
    assert pool.get(model) is not a


def test_toy_tagger_tags_a_fresh_folder_well(tmp_path):
    """Quality through the whole pipeline: the toy world's WD14-format tagger on new scenes, F1 of the written
    captions against the generator's own tags."""
    from scal_sdt.toy_world.world import make_dataset

    data = tmp_path / "toy"
    make_dataset(data, 60, seed=321, style="tags")
    truth = {p.stem: set(p.read_text().strip().split(", ")) for p in data.glob("*.txt")}
    for p in data.glob("*.txt"):
        p.unlink()
    report = tag_folder(cfg(data, "toy", tmp_path, underscores_to_spaces=False))
    assert report.written == 60
    tp = fp = fn = 0
    for stem, want in truth.items():
        said = set((data / f"{stem}.txt").read_text().split(", "))
        tp, fp, fn = tp + len(want & said), fp + len(said - want), fn + len(want - said)
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= 0.9, f1


def test_cli_tag(tmp_path, capsys):
    from scal_sdt.cli import main

    model = wd14_folder(tmp_path / "wd", NAMES, CATS, SCORES)
    data = tmp_path / "data"
    make_images(data, 3)
    assert main(["tag", str(data), "--model", str(model), "--cache-dir", "", "--add-tags", "mychar",
                 "--no-escape-brackets"]) == 0
    assert (data / "001.txt").read_text() == "mychar, hatsune miku, long hair, smile, ^_^, blue (sky)"
    assert "3 caption(s) written" in capsys.readouterr().out
    assert main(["tag", str(tmp_path / "missing"), "--model", str(model)]) == 2


def test_clip_terms_name_the_colour_and_a_host_captioner_comes_first(tmp_path):
    """The toy CLIP ranks colour words against toy pictures (top-1 well above chance, 1/11); the host's captioner
    (the WebUI's BLIP inside the WebUI) writes the caption's first part; without a host, blip is refused."""
    from scal_sdt.toy_world.world import COLOURS, HELD_OUT, make_dataset

    data = tmp_path / "toy"
    scenes = make_dataset(data, 40, seed=11, style="tags")
    for p in data.glob("*.txt"):
        p.unlink()
    colours = [c for c in COLOURS if c != HELD_OUT["colour"]]
    seen = []
    report = tag_folder(cfg(data, "toy", tmp_path, clip_model="toy", clip_terms=", ".join(colours), clip_top=1,
                            exclude=",".join(colours), blip=True),
                        captioner=lambda im: seen.append(im.size) or "a picture")
    assert report.written == 40 and seen == [(64, 64)] * 40
    captions = [(data / f"{i:05d}.txt").read_text().split(", ") for i in range(40)]
    assert all(c[0] == "a picture" and c[-1] in colours for c in captions)
    right = sum(c[-1] == s.colour for c, s in zip(captions, scenes))
    assert right / 40 >= 0.45, right
    with pytest.raises(ValueError, match="WebUI's interrogator"):
        tag_folder(cfg(data, "toy", tmp_path, blip=True, existing="overwrite"))
    with pytest.raises(ValueError, match="clip_terms is needed"):
        cfg(data, "toy", tmp_path, clip_model="toy")


def test_a_known_name_is_found_in_the_hub_cache_with_its_published_threshold(tmp_path, monkeypatch):
    """``--model wd-eva02-large-tagger-v3`` finds SmilingWolf's repo in the Hugging Face cache (never downloading)
    and uses its model card's P=R threshold 0.5296 for general tags."""
    import huggingface_hub.constants as hf

    repo = tmp_path / "hub" / "models--SmilingWolf--wd-eva02-large-tagger-v3"
    snap = repo / "snapshots" / "0123abcd"
    wd14_folder(snap, NAMES, CATS, [0.9, 0.1, 0.0, 0.0, 0.1, 0.1, 0.6, 0.5, 0.3, 0.1, 0.1, 0.1])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert Tagger("wd-eva02-large-tagger-v3").folder == snap
    data = tmp_path / "data"
    make_images(data, 1)
    tag_folder(cfg(data, "wd-eva02-large-tagger-v3", tmp_path))
    assert (data / "000.txt").read_text() == "long hair"  # 0.6 passes 0.5296, smile's 0.5 does not
