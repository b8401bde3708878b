"""The data options every trainer shares: caption dropout, long-caption warning, random crop, colour jitter,
several resolutions, folder loss weights."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from scal_sdt.training.frozen_job import FrozenModelJob
from scal_sdt.training.images import folder_weight, scan_folder
from scal_sdt.training.options import TrainingOptions, weight_map
from scal_sdt.training.run_setup import warn_long_captions
from recording import RecordingReporter
from test_dataset import build, fake_encode, save, split_image


def job(**cfg):
    base = dict(caption_dropout=0.0, shuffle_tags=False, tag_dropout=0.0, keep_tokens=0)
    return SimpleNamespace(cfg=SimpleNamespace(**{**base, **cfg}), prompt_rng=random.Random(0))


def test_caption_dropout_drops_the_whole_caption_at_its_rate():
    j = job(caption_dropout=0.3, shuffle_tags=True, keep_tokens=1)
    words = [FrozenModelJob.caption_words(j, "sks, red, round, small") for _ in range(4000)]
    dropped = sum(w == "" for w in words) / len(words)
    assert dropped == pytest.approx(0.3, abs=0.025)
    assert all(w.startswith("sks, ") for w in words if w)  # the kept ones: tags shuffled, the first kept
    off = job()
    state = off.prompt_rng.getstate()
    assert FrozenModelJob.caption_words(off, "a, b") == "a, b"
    assert off.prompt_rng.getstate() == state  # off: no draw, so earlier runs replay exactly


def test_captions_longer_than_75_tokens_are_counted():
    rep = RecordingReporter()
    items = [SimpleNamespace(caption="red " * 80), SimpleNamespace(caption="a short one"),
             SimpleNamespace(caption=", ".join(["blue"] * 60))]
    assert warn_long_captions(items, rep) == 2
    assert any("2 of 3 caption(s) are longer than the text encoder's 75 tokens" in m for m in rep.messages)
    assert warn_long_captions(items[1:2], RecordingReporter()) == 0


def test_random_crop_caches_copies_cropped_at_random_places(tmp_path):
    split_image(tmp_path / "wide.png", size=(128, 64))  # overhangs a 64x64 bucket by 64 px
    items = scan_folder(tmp_path).items
    centred = build(items, cache_mode="deterministic")
    cropped = build(items, cache_mode="deterministic", random_crop=True, augment_variants=6, seed=3)
    assert centred.entries[0].latents.shape[0] == 1 and cropped.entries[0].latents.shape[0] == 6
    # the red share (channel 0) of each copy: the centre crop is half red; random crops spread around it
    red = cropped.entries[0].latents[:, 0].mean(dim=(1, 2))
    assert red.max() - red.min() > 0.3
    assert centred.entries[0].latents[0, 0].mean() == pytest.approx(0.0, abs=0.05)
    again = build(items, cache_mode="deterministic", random_crop=True, augment_variants=6, seed=3)
    assert torch.equal(again.entries[0].latents, cropped.entries[0].latents)  # seeded
    drawn = {int(cropped.next_batch().latents[0, 0].mean() * 1000) for _ in range(30)}
    assert len(drawn) > 2  # each use picks one of the copies


def test_color_jitter_varies_brightness_within_its_strength(tmp_path):
    save(tmp_path / "grey.png", color=(128, 128, 128))
    items = scan_folder(tmp_path).items
    plain = build(items, cache_mode="deterministic").entries[0].latents
    jittered = build(items, cache_mode="deterministic", color_jitter=0.2, augment_variants=8).entries[0].latents
    assert jittered.shape[0] == 8
    level = lambda x: (x[:, 0].mean(dim=(1, 2)) + 1) * 127.5  # noqa: E731 - back to pixel values
    assert level(plain).item() == pytest.approx(128, abs=1)
    assert level(jittered).std() > 2 and ((level(jittered) - 128).abs() <= 0.2 * 128 + 1).all()


def test_several_resolutions_cache_each_image_at_each_size(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", size=(96, 96))
    ds = build(scan_folder(tmp_path).items, resolutions=[64, 128], batch_size=2)
    assert len(ds.items) == 3 and len(ds.entries) == 6
    assert sorted({tuple(e.latents.shape[-2:]) for e in ds.entries}) == [(8, 8), (16, 16)]
    assert ds.len_epoch == 4  # 3 per size, in batches of 2
    shapes = [ds.next_batch().latents.shape for _ in range(ds.len_epoch)]
    assert sorted(s[0] for s in shapes) == [1, 1, 2, 2] and {s[-1] for s in shapes} == {8, 16}
    with pytest.raises(ValueError, match="resolutions"):
        TrainingOptions(resolutions="512,700")


def test_folder_weights_reach_the_batch(tmp_path):
    save(tmp_path / "10_mychar" / "a.png")
    save(tmp_path / "2_background" / "b.png", color=(0, 200, 0))
    save(tmp_path / "c.png", color=(0, 0, 200))
    weights = weight_map("mychar=3, 2_background=0.5")
    assert weights == {"mychar": 3.0, "2_background": 0.5}
    items = scan_folder(tmp_path).items
    got = {i.path.name: folder_weight(i.path, tmp_path, weights) for i in items}
    assert got == {"a.png": 3.0, "b.png": 0.5, "c.png": 1.0}
    import dataclasses

    ds = build([dataclasses.replace(i, weight=got[i.path.name]) for i in items], batch_size=3)
    seen = {}
    for _ in range(ds.len_epoch):
        batch = ds.next_batch()
        weights = batch.image_weights.tolist() if batch.image_weights is not None else [1.0] * len(batch.paths)
        seen.update({p.name: w for p, w in zip(batch.paths, weights)})
    assert seen == got
    assert all(build(items, batch_size=3).next_batch().image_weights is None for _ in range(4))  # all 1: as before
    for bad in ("mychar", "a=-1", "=2"):
        with pytest.raises(ValueError, match="folder_weights"):
            TrainingOptions(folder_weights=bad)


def test_augmentation_keeps_masks_aligned(tmp_path):
    split_image(tmp_path / "wide.png", size=(128, 64))
    mask = tmp_path / "wide_mask.png"
    from PIL import Image

    m = Image.new("L", (128, 64), 0)
    m.paste(255, (0, 0, 64, 64))  # the red half counts
    m.save(mask)
    ds = build(scan_folder(tmp_path).items, cache_mode="deterministic", random_crop=True, augment_variants=5)
    entry = ds.entries[0]
    assert entry.weight.shape[0] == 5
    for v in range(5):  # where a copy shows more red, its mask covers more of it
        red_share = (entry.latents[v, 0] > 0).float()
        w = entry.weight[v, 0]
        assert ((w > 0).float() - red_share).abs().mean() < 0.2
    assert fake_encode  # the dataset's stand-in VAE
