"""The toy world (deterministic shapes-and-captions generator) and its judge (a small shape/colour CNN)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from scal_sdt.toy_world import (COLOURS, HELD_OUT, SHAPES, SIZES, TEXTURES, Scene, caption_sentence, caption_tags,
                                make_dataset, render, sample_scene)
from scal_sdt.toy_world.judge import Judge, sample_labelled, train_judge, untrained_judge
from scal_sdt.toy_world.world import texture_colour


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_vocabularies():
    assert {"circle", "square", "triangle", "star"} <= set(SHAPES) and len(SHAPES) >= 6
    assert len(COLOURS) >= 8 and "white" in COLOURS
    assert set(SIZES) == {"small", "medium", "large"}
    assert HELD_OUT["shape"] in SHAPES and HELD_OUT["colour"] in COLOURS


def test_dataset_is_deterministic(tmp_path):
    a = make_dataset(tmp_path / "a", 12, seed=3)
    b = make_dataset(tmp_path / "b", 12, seed=3)
    c = make_dataset(tmp_path / "c", 12, seed=4)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert sorted(fa) == [f"{i:05d}.{e}" for i in range(12) for e in ("png", "txt")]
    assert a == b and fa == fb
    assert a != c and fa != fc
    # a filter keeps the files deterministic and only lets matching scenes through
    s1 = make_dataset(tmp_path / "s1", 5, seed=1, style="sentence", filter=lambda s: s.shape == "star")
    s2 = make_dataset(tmp_path / "s2", 5, seed=1, style="sentence", filter=lambda s: s.shape == "star")
    assert s1 == s2 and _files(tmp_path / "s1") == _files(tmp_path / "s2")
    assert all(s.shape == "star" for s in s1)
    assert (tmp_path / "s1" / "00000.txt").read_text().strip() == caption_sentence(s1[0])


def test_captions_name_shape_colour_background():
    plain = Scene("star", "red", "blue", "large", (0.5, 0.5))
    assert caption_sentence(plain) == "a large red star on a blue background"
    tags = caption_tags(plain).split(", ")
    assert tags[:4] == ["red_star", "star", "red", "blue_background"]
    assert "large" in tags and "simple_background" in tags and "centre" in tags
    striped = Scene("circle", "green", "white", "small", (0.25, 0.25), "stripes")
    assert caption_sentence(striped) == "a small green circle on a white striped background"
    assert caption_sentence(striped, with_position=True).endswith("at the top left")
    assert {"green_circle", "white_background", "striped_background", "top_left"} <= set(caption_tags(striped).split(", "))
    assert caption_sentence(Scene("cross", "blue", "orange", "small", (0.5, 0.5))).endswith("on an orange background")
    rng = random.Random(0)
    for _ in range(200):
        s = sample_scene(rng, allow_held_out=True)
        sentence, tags = caption_sentence(s), caption_tags(s).split(", ")
        assert f" {s.colour} {s.shape} on a" in sentence and f" {s.background} " in sentence
        assert f"{s.colour}_{s.shape}" in tags and f"{s.background}_background" in tags and s.size in tags
        assert all(" " not in t for t in tags)


def test_held_out_concepts_only_when_allowed():
    rng = random.Random(1)
    base = [sample_scene(rng) for _ in range(500)]
    assert not any(s.uses_held_out for s in base)
    assert not any(HELD_OUT["shape"] in caption_tags(s) or HELD_OUT["colour"] in caption_sentence(s) for s in base)
    assert {s.shape for s in base} == set(SHAPES) - {HELD_OUT["shape"]}
    everything = [sample_scene(rng, allow_held_out=True) for _ in range(500)]
    assert any(s.shape == HELD_OUT["shape"] for s in everything)
    assert any(s.colour == HELD_OUT["colour"] for s in everything)
    assert {s.texture for s in everything} == {None, *TEXTURES}


def test_the_unet_mix_draws_more_legible_shapes_and_the_default_is_unchanged():
    """The base UNet's pool (UNET_MIX): half the backgrounds white (of shapes not white), a third textured, half
    the shapes large; the default mix (every data set, the CLIP's, VAE's and tagger's pools) draws exactly what it drew
    before the mix existed (the same random calls: shipped models and test data sets stay bit-for-bit)."""
    from scal_sdt.toy_world.world import DEFAULT_MIX, UNET_MIX

    rng = random.Random(3)
    mixed = [sample_scene(rng, mix=UNET_MIX) for _ in range(3000)]
    share = lambda f: sum(map(f, mixed)) / len(mixed)  # noqa: E731
    assert 0.40 < share(lambda s: s.background == "white") < 0.51  # 0.5 of the scenes whose shape is not white
    assert 0.31 < share(lambda s: s.texture is not None) < 0.39
    assert 0.46 < share(lambda s: s.size == "large") < 0.54 and 0.12 < share(lambda s: s.size == "small") < 0.18
    assert not any(s.uses_held_out for s in mixed)
    first = sample_scene(random.Random(0), mix=DEFAULT_MIX)
    assert first == Scene("diamond", "purple", "white", "medium", (0.6955, 0.4941)), first


def test_invalid_scenes_are_refused():
    with pytest.raises(ValueError):
        Scene("star", "red", "red", "small", (0.5, 0.5))
    with pytest.raises(ValueError):
        Scene("star", "red", "blue", "large", (0.05, 0.5))
    with pytest.raises(ValueError):
        Scene("blob", "red", "blue", "small", (0.5, 0.5))


def test_shapes_in_bounds_and_colours_differ_from_background():
    rng = random.Random(2)
    for _ in range(300):
        s = sample_scene(rng, allow_held_out=True)
        assert s.colour != s.background
        fg, bg = np.array(COLOURS[s.colour]), np.array(COLOURS[s.background])
        assert np.abs(fg - bg).max() >= 40 and np.abs(fg - np.array(texture_colour(s.background))).max() >= 20
        plain = Scene(s.shape, s.colour, s.background, s.size, s.position)  # no texture: exact background test
        img = np.asarray(render(plain, 64)).astype(int)
        assert img.shape == (64, 64, 3)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == bg).all(), f"{s} touches the edge"
        cx, cy = int(s.position[0] * 64), int(s.position[1] * 64)
        assert (img[cy, cx] == fg).all(), f"{s}: the shape's centre is not in its colour"
        differs = (np.abs(img - bg).sum(-1) > 0).mean()
        assert 0.01 < differs < 0.5
        textured = np.asarray(render(s, 64)).astype(int)
        assert (textured[cy, cx] == fg).all()


@pytest.fixture(scope="module")
def fresh_sample():
    return sample_labelled(600, seed=987)


def test_untrained_judge_is_near_chance(fresh_sample):
    acc = untrained_judge(seed=5).accuracy(*fresh_sample)
    assert acc["shape"] < 0.35 and acc["colour"] < 0.35, acc


def test_judge_learns_shapes_and_colours(tmp_path, fresh_sample):
    judge = train_judge(steps=500, seed=0)
    acc = judge.accuracy(*fresh_sample)
    assert acc["shape"] > 0.8 and acc["colour"] > 0.9, acc
    images = fresh_sample[1][:50]
    path = judge.save(tmp_path / "judge.safetensors")
    loaded = Judge.load(path)
    assert loaded.shapes == SHAPES and loaded.colours == tuple(COLOURS)
    assert loaded.predict(images) == judge.predict(images)
    assert loaded.info["steps"] == 500
    (tmp_path / "bad.safetensors").write_bytes(b"not a judge")
    with pytest.raises(Exception):
        Judge.load(tmp_path / "bad.safetensors")
