"""The shared training dataset: folder scan, templates and tags, buckets, and the cached latent dataset.

No VAE: ``fake_encode`` average-pools pixels by 8 into 4 channels, so latents are predictable and fast.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scal_sdt.training.buckets import assign_bucket, make_buckets, resize_and_crop
from scal_sdt.training.dataset import LatentDataset
from scal_sdt.training.images import caption_from_filename, load_image, scan_folder
from scal_sdt.training.templates import list_templates, load_template, process_tags, render


def fake_encode(pixels: torch.Tensor):
    pooled = F.avg_pool2d(pixels, 8)
    mean = torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)
    return mean, torch.full_like(mean, 0.1)


def save(path: Path, size=(64, 64), color=(200, 30, 30), mode="RGB", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **kw)
    return path


def split_image(path: Path, size=(64, 64)) -> Path:
    """Red on the left half, blue on the right: not mirror-symmetric."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def build(items, **kw) -> LatentDataset:
    kw = {"resolution": 64, "buckets": False, "encode_moments": fake_encode, **kw}
    return LatentDataset(items, **kw)


# -- scanning ------------------------------------------------------------------------------------------------------

def test_scan_repeats_captions_and_masks(tmp_path):
    save(tmp_path / "10_mychar" / "a.png")
    (tmp_path / "10_mychar" / "a.txt").write_text("  tag one, tag two\n", encoding="utf-8")
    save(tmp_path / "10_mychar" / "a_mask.png", mode="L", color=255)
    save(tmp_path / "3_other" / "deep" / "b.png")
    save(tmp_path / "plain" / "00012-0-red_cat.jpg")
    save(tmp_path / "c.webp", size=(80, 40))

    result = scan_folder(tmp_path)
    assert result.skipped == []
    by_name = {item.path.name: item for item in result.items}
    assert sorted(by_name) == ["00012-0-red_cat.jpg", "a.png", "b.png", "c.webp"]  # the mask is not an image
    assert by_name["a.png"].repeats == 10 and by_name["b.png"].repeats == 3 and by_name["c.webp"].repeats == 1
    assert by_name["a.png"].caption == "tag one, tag two"
    assert by_name["a.png"].mask_path == tmp_path / "10_mychar" / "a_mask.png"
    assert by_name["b.png"].mask_path is None
    assert by_name["00012-0-red_cat.jpg"].caption == "red_cat"  # the WebUI's default: strip the number prefix only
    assert by_name["c.webp"].size == (80, 40)

    words = scan_folder(tmp_path, word_regex=r"[^_]+", join_string=" ")
    assert {i.path.name: i.caption for i in words.items}["00012-0-red_cat.jpg"] == "red cat"
    assert caption_from_filename("00003-1-a dog") == "a dog"


def test_bad_files_are_skipped_with_reasons(tmp_path):
    good = save(tmp_path / "good.png")
    (tmp_path / "noise.png").write_bytes(random.Random(0).randbytes(500))
    save(tmp_path / "cut.jpg", size=(64, 64))
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.webp").write_bytes(b"")
    save(tmp_path / "orphan_mask.png", mode="L", color=255)
    (tmp_path / "notes.txt").write_text("not an image")

    result = scan_folder(tmp_path)
    assert [i.path for i in result.items] == [good]
    reasons = {path.name: reason for path, reason in result.skipped}
    assert set(reasons) == {"noise.png", "cut.jpg", "empty.webp", "orphan_mask.png"}
    assert "empty file" in reasons["empty.webp"]
    assert "unreadable" in reasons["noise.png"] and "unreadable" in reasons["cut.jpg"]
    assert "no image" in reasons["orphan_mask.png"]


def test_load_image_exif_and_alpha(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 40x20, shown 20x40
    save(tmp_path / "rot.jpg", size=(40, 20), exif=exif)
    assert scan_folder(tmp_path).items[0].size == (20, 40)
    assert load_image(tmp_path / "rot.jpg")[0].size == (20, 40)

    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 8, 16))
    rgba.save(tmp_path / "alpha.png")
    image, weight = load_image(tmp_path / "alpha.png")
    assert image.mode == "RGB" and weight is None
    assert image.getpixel((12, 4)) == (255, 255, 255) and image.getpixel((2, 4)) == (10, 20, 30)
    image, weight = load_image(tmp_path / "alpha.png", alpha_as_weight=True)
    assert weight.getpixel((2, 4)) == 255 and weight.getpixel((12, 4)) == 0


# -- templates and tags ------------------------------------------------------------------------------------------

def test_templates():
    names = list_templates()
    for name in ("none", "style", "style_filewords", "subject", "subject_filewords", "hypernetwork"):
        assert name in names and load_template(name)
    assert all("[name]" in line and "[filewords]" in line for line in load_template("subject_filewords"))
    assert all("[name]" not in line and "[filewords]" in line for line in load_template("hypernetwork"))
    rendered = render("a photo of a [name], [filewords]", "mychar", "red hair, smile")
    assert rendered == "a photo of a mychar, red hair, smile"
    with pytest.raises(FileNotFoundError, match="subject_filewords"):
        load_template("no_such_template")


def test_template_from_path(tmp_path):
    (tmp_path / "mine.txt").write_text("[name] in [filewords]\n\n  second [name]  \n", encoding="utf-8")
    assert load_template(tmp_path / "mine.txt") == ["[name] in [filewords]", "second [name]"]


def test_process_tags():
    caption = "mychar, 1girl, red hair, smile, outdoors, hat"
    assert process_tags(caption, False, 0.0, 1, random.Random(0)) == caption
    shuffled = process_tags(caption, True, 0.0, 2, random.Random(5))
    assert shuffled.startswith("mychar, 1girl, ")
    assert sorted(shuffled.split(", ")) == sorted(caption.split(", "))
    assert shuffled == process_tags(caption, True, 0.0, 2, random.Random(5))
    assert {process_tags(caption, True, 0.0, 2, random.Random(s)) for s in range(20)} != {shuffled}
    dropped = process_tags(caption, False, 0.5, 1, random.Random(3))
    assert dropped == process_tags(caption, False, 0.5, 1, random.Random(3))
    assert dropped.startswith("mychar") and len(dropped.split(", ")) < 6
    assert process_tags(caption, True, 1.0, 1, random.Random(0)) == "mychar"
    with pytest.raises(ValueError, match="dropout"):
        process_tags(caption, False, 1.5, 0, random.Random(0))


# -- buckets -------------------------------------------------------------------------------------------------------

def test_buckets_area_and_assignment():
    buckets = make_buckets(512, 256, 1024, step=64)
    assert (512, 512) in buckets
    for w, h in buckets:
        assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024
    assert assign_bucket((1000, 1000), buckets) == (512, 512)
    wide = assign_bucket((1600, 900), buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 16 / 9) < 0.2
    tall = assign_bucket((900, 1600), buckets)
    assert tall == wide[::-1]


def test_resize_and_crop():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 150, 100))
    centred = resize_and_crop(image, (64, 64))
    assert centred.size == (64, 64)
    assert centred.getpixel((5, 32))[0] > 200 and centred.getpixel((58, 32))[2] > 200  # split stays in the middle
    crops = {resize_and_crop(image, (64, 64), random.Random(s)).tobytes() for s in range(5)}
    assert len(crops) > 1 and all(len(c) == 64 * 64 * 3 for c in crops)


# -- the latent dataset --------------------------------------------------------------------------------------------

def mixed_folder(root: Path) -> Path:
    for i, size in enumerate([(128, 128), (130, 120), (256, 96), (250, 90), (96, 256), (64, 200)]):
        save(root / f"img{i}.png", size=size, color=(i * 40, 100, 200 - i * 30))
    save(root / "2_twice" / "rep.png", size=(128, 128))
    return root


def test_batches_never_mix_buckets_and_count_repeats(tmp_path):
    scan = scan_folder(mixed_folder(tmp_path))
    data = build(scan, resolution=128, buckets=True, batch_size=2)
    assert len({e.bucket for e in data.entries}) >= 3
    bucket_of = {e.item.path: e.bucket for e in data.entries}
    seen = Counter()
    for _ in range(data.len_epoch):
        assert data.epoch == 0
        batch = data.next_batch()
        assert len({bucket_of[p] for p in batch.paths}) == 1
        w, h = bucket_of[batch.paths[0]]
        assert batch.latents.shape == (len(batch.paths), 4, h // 8, w // 8)
        assert batch.weights is None and len(batch.captions) == len(batch.paths)
        seen.update(batch.paths)
    assert data.epoch == 1 and data.position == 0
    assert seen[tmp_path / "2_twice" / "rep.png"] == 2 and sum(seen.values()) == 8


def test_no_buckets_means_square(tmp_path):
    data = build(scan_folder(mixed_folder(tmp_path)), resolution=64, batch_size=4)
    shapes = {data.next_batch().latents.shape[1:] for _ in range(data.len_epoch)}
    assert shapes == {(4, 8, 8)} and data.len_epoch == 2  # 8 uses in one bucket, batches of 4


def test_cache_modes(tmp_path):
    scan = scan_folder(mixed_folder(tmp_path))

    def latents_by_path(data, epochs=2):
        out = {}
        for _ in range(epochs * data.len_epoch):
            batch = data.next_batch()
            for path, latent in zip(batch.paths, batch.latents):
                out.setdefault(path, []).append(latent)
        return out

    for mode in ("deterministic", "once"):
        runs = latents_by_path(build(scan, cache_mode=mode))
        for latents in runs.values():
            assert all(torch.equal(latents[0], x) for x in latents)
    path = scan.items[0].path
    mean = build(scan, cache_mode="deterministic").entries[0].latents[0]
    once = build(scan, cache_mode="once").entries[0].latents[0]
    assert not torch.equal(mean, once) and (mean - once).abs().max() < 1.0
    assert torch.equal(once, build(scan, cache_mode="once").entries[0].latents[0])  # seeded
    assert not torch.equal(once, build(scan, cache_mode="once", seed=1).entries[0].latents[0])
    random_runs = latents_by_path(build(scan, cache_mode="random"))
    assert not torch.equal(random_runs[path][0], random_runs[path][1])


def test_resume_is_exact(tmp_path):
    scan = scan_folder(mixed_folder(tmp_path))
    kw = dict(resolution=128, buckets=True, batch_size=2, cache_mode="random", flip=True, seed=7)
    straight = build(scan, **kw)
    reference = [straight.next_batch() for _ in range(straight.len_epoch + 4)]

    first = build(scan, **kw)
    k = first.len_epoch - 2  # resume across an epoch boundary
    for _ in range(k):
        first.next_batch()
    state = first.state_dict()
    assert state == {"epoch": 0, "position": k, "seed": 7}

    resumed = build(scan, **kw)
    resumed.load_state_dict(state)
    for expected in reference[k:]:
        got = resumed.next_batch()
        assert got.paths == expected.paths and got.captions == expected.captions
        assert torch.equal(got.latents, expected.latents)
    with pytest.raises(ValueError, match="seed"):
        build(scan, **{**kw, "seed": 8}).load_state_dict(state)


def test_flip(tmp_path):
    split_image(tmp_path / "split.png")
    data = build(scan_folder(tmp_path), cache_mode="deterministic", flip=True)
    plain = fake_encode(torch.zeros(1, 3, 64, 64))[0]  # just the shape
    variants = data.entries[0].latents
    assert variants.shape == (2, *plain.shape[1:])
    assert torch.allclose(variants[1], variants[0].flip(-1))
    seen = {tuple(data.next_batch().latents[0, 0, 0, :2].tolist()) for _ in range(16)}
    assert len(seen) == 2  # both orientations get used
    assert not build(scan_folder(tmp_path), flip=False).flip


def test_mask_and_alpha_weights(tmp_path):
    save(tmp_path / "a.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "a_mask.png")
    rgba = Image.new("RGBA", (64, 64), (50, 50, 50, 255))
    rgba.paste((50, 50, 50, 0), (0, 0, 64, 32))
    rgba.save(tmp_path / "b.png")
    save(tmp_path / "c.png")

    data = build(scan_folder(tmp_path), alpha_as_weight=True, batch_size=3)
    batch = data.next_batch()
    assert batch.weights.shape == (3, 1, 8, 8)
    w = dict(zip((p.name for p in batch.paths), batch.weights))
    assert torch.all(w["a.png"][..., :4] == 2) and torch.all(w["a.png"][..., 4:] == 0)  # mean 1
    assert torch.all(w["b.png"][..., :4, :] == 0) and torch.all(w["b.png"][..., 4:, :] == 2)
    assert torch.all(w["c.png"] == 1)  # no weight of its own in a weighted batch

    no_alpha = build(scan_folder(tmp_path), batch_size=3).entries
    assert [e.weight is None for e in no_alpha] == [False, True, True]  # the mask file always counts


def test_cache_time_failures_and_empty_dataset(tmp_path):
    save(tmp_path / "a.png")
    gone = save(tmp_path / "b.png")
    scan = scan_folder(tmp_path)
    gone.unlink()
    data = build(scan)
    assert [i.path.name for i in data.items] == ["a.png"]
    assert [p.name for p, _ in data.skipped] == ["b.png"]

    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match=r"bad\.png: unreadable"):
        build(scan_folder(tmp_path))
    with pytest.raises(ValueError, match="cache_mode"):
        build(scan, cache_mode="sometimes")


def test_caching_encodes_one_picture_per_call(tmp_path):
    """The VAE's activations grow with the pixels of a call (tiny SD1: ~50 MB for one 256 px picture, ~135 MB for
    four; 3 MB for one 64 px picture, 14 MB for four), so caching never sets a run's peak: one picture a call at every
    size, as the WebUI's own trainers; the cache is the same either way."""
    for i in range(4):
        save(tmp_path / f"{i}.png", size=(256, 256), color=(40 * i, 30, 200 - 40 * i))
    calls = []

    def counting(pixels):
        calls.append(tuple(pixels.shape))
        return fake_encode(pixels)

    data = build(scan_folder(tmp_path), resolution=256, encode_moments=counting, cache_mode="deterministic", flip=True)
    assert calls and all(c[0] == 1 and c[2:] == (256, 256) for c in calls) and len(calls) == 8  # 4 pictures + mirrors
    for entry in data.entries:  # each picture's latents are its own, in their order (plain, mirrored)
        pixels = torch.from_numpy(np.asarray(Image.open(entry.item.path), dtype=np.float32) / 127.5 - 1.0)
        expected = fake_encode(pixels.permute(2, 0, 1)[None])[0][0]
        assert torch.allclose(entry.latents[0], expected, atol=1e-5)
        assert torch.allclose(entry.latents[1], expected.flip(-1), atol=1e-5)
    calls.clear()
    build(scan_folder(tmp_path), resolution=64, encode_moments=counting)
    assert [c[0] for c in calls] == [1, 1, 1, 1]
