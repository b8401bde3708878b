"""Textual Inversion embedding files: our reader/writer against the WebUI's own layouts and acceptance rules."""
from __future__ import annotations

import base64
import collections
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image, ImageDraw, PngImagePlugin

import webui_rules
from scal_sdt.textual_inversion import png_embedding
from scal_sdt.textual_inversion.format import Embedding, EmbeddingError, check_fits, load_embedding, save_embedding


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def sd1(name: str = "my-style", n: int = 3) -> Embedding:
    t = _rand(n, 768)
    t[0, 0] = 1e-38  # subnormal-ish and odd values must survive bit-exactly
    t[0, 1] = -0.0
    t[1, 2] = 3.4028234e38
    return Embedding(name, {"*": t}, step=1500, sd_checkpoint="a1b2c3d4e5", sd_checkpoint_name="tiny-sd1",
                     meta={"config": json.dumps({"lr": 0.005, "steps": 1500})})


def sdxl(name: str = "xl-thing", n: int = 2) -> Embedding:
    return Embedding(name, {"clip_l": _rand(n, 768, seed=1), "clip_g": _rand(n, 1280, seed=2)}, step=42,
                     sd_checkpoint="0123456789", sd_checkpoint_name="tiny-sdxl", meta={"note": "ünïcode ok"})


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a.view(torch.int32),
                                                                                      b.view(torch.int32))


def assert_same_vectors(got: Embedding, want: Embedding) -> None:
    assert set(got.vectors) == set(want.vectors)
    for k in want.vectors:
        assert same_bits(got.vectors[k], want.vectors[k]), k


def webui_vec(e: webui_rules.WebUIEmbedding, key: str = "*") -> torch.Tensor:
    return e.vec if key == "*" else e.vec[key]


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", ["safetensors", "pt", "png"])
def test_round_trip_sd1(tmp_path: Path, kind: str) -> None:
    emb = sd1()
    path = save_embedding(emb, tmp_path / "my-style", kind)
    assert path.name == f"my-style.{kind}"
    got = load_embedding(path)
    assert_same_vectors(got, emb)
    assert (got.name, got.step, got.sd_checkpoint, got.sd_checkpoint_name) == (
        "my-style", 1500, "a1b2c3d4e5", "tiny-sd1")
    assert got.meta == emb.meta
    assert got.num_vectors == 3 and got.widths == {"*": 768}
    assert load_embedding(path, name="other").name == "other"


@pytest.mark.parametrize("kind", ["safetensors", "png"])
def test_round_trip_sdxl_with_metadata(tmp_path: Path, kind: str) -> None:
    emb = sdxl()
    got = load_embedding(save_embedding(emb, tmp_path / "xl-thing", kind))
    assert_same_vectors(got, emb)
    assert (got.name, got.step, got.sd_checkpoint, got.sd_checkpoint_name, got.meta) == (
        emb.name, emb.step, emb.sd_checkpoint, emb.sd_checkpoint_name, emb.meta)
    assert got.widths == {"clip_l": 768, "clip_g": 1280}


def test_round_trip_sdxl_pt_keeps_only_tensors(tmp_path: Path) -> None:
    # The WebUI turns every value of an SDXL dict into a tensor, so an SDXL .pt cannot carry name/step/checkpoint.
    emb = sdxl()
    path = save_embedding(emb, tmp_path / "renamed.pt", "pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"clip_l", "clip_g"} and all(type(v) is torch.Tensor for v in raw.values())
    got = load_embedding(path)
    assert_same_vectors(got, emb)
    assert (got.name, got.step, got.sd_checkpoint) == ("renamed", None, None)


def test_saved_names_and_name_override(tmp_path: Path) -> None:
    emb = sd1("inner")
    assert load_embedding(save_embedding(emb, tmp_path / "outer.safetensors")).name == "inner"
    assert load_embedding(save_embedding(emb, tmp_path / "outer.bin", "pt")).name == "inner"
    with pytest.raises(EmbeddingError, match="does not match"):
        save_embedding(emb, tmp_path / "x.safetensors", "pt")
    with pytest.raises(EmbeddingError, match="preview"):
        save_embedding(emb, tmp_path / "x.preview.png", "png")
    with pytest.raises(EmbeddingError, match="unknown format"):
        save_embedding(emb, tmp_path / "x", "ckpt")


# ------------------------------------------------------------------------------------------ the WebUI accepts our files
@pytest.mark.parametrize("kind", ["safetensors", "pt", "png"])
@pytest.mark.parametrize("make", [sd1, sdxl])
def test_webui_accepts_what_we_write(tmp_path: Path, kind: str, make) -> None:
    emb = make()
    path = save_embedding(emb, tmp_path / emb.name, kind)
    if kind == "pt":
        webui_rules.check_pt(path)
    got = webui_rules.load_embedding_file(path)
    assert got is not None
    assert got.name == emb.name  # from the file stem (.pt/.safetensors) or the stored name (PNG)
    if "*" in emb.vectors:
        assert same_bits(webui_vec(got), emb.vectors["*"])
        assert got.shape == 768 and got.vectors == emb.num_vectors
        assert webui_rules.registered_for(got, "sd1") and not webui_rules.registered_for(got, "sdxl")
        if kind != "safetensors":  # the WebUI does not read safetensors metadata
            assert (got.step, got.sd_checkpoint, got.sd_checkpoint_name) == (1500, "a1b2c3d4e5", "tiny-sd1")
    else:
        assert set(got.vec) == {"clip_l", "clip_g"}
        for k in ("clip_l", "clip_g"):
            assert same_bits(webui_vec(got, k), emb.vectors[k])
        assert got.shape == 2048 and webui_rules.registered_for(got, "sdxl")


def test_our_pt_is_legacy_plain_and_weights_only_readable(tmp_path: Path) -> None:
    path = save_embedding(sd1(), tmp_path / "e.pt", "pt")
    assert not zipfile.is_zipfile(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["string_to_token"] == {"*": 265} and raw["name"] == "my-style" and raw["step"] == 1500
    assert set(raw) >= {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    t = raw["string_to_param"]["*"]
    assert type(t) is torch.Tensor and not t.requires_grad
    assert t.untyped_storage().nbytes() == t.numel() * 4  # no larger storage pickled along


def test_oracle_rejects_modern_zip_and_foreign_globals(tmp_path: Path) -> None:
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": _rand(2, 768)}, "name": "z", "step": 1}
    modern = tmp_path / "modern.pt"
    torch.save(data, modern)  # torch's default zip format
    with pytest.raises(webui_rules.SafeCheckFailed, match=r"\.format_version|byteorder|serialization_id|alignment"):
        webui_rules.check_pt(modern)
    with pytest.raises(webui_rules.SafeCheckFailed):
        webui_rules.load_embedding_file(modern)
    assert load_embedding(modern).name == "z"  # we read it all the same

    foreign = tmp_path / "foreign.pt"
    torch.save({**data, "extra": collections.Counter(a=1)}, foreign, _use_new_zipfile_serialization=False)
    with pytest.raises(webui_rules.SafeCheckFailed, match="collections/Counter"):
        webui_rules.check_pt(foreign)
    legacy = tmp_path / "legacy.pt"
    torch.save(data, legacy, _use_new_zipfile_serialization=False)
    webui_rules.check_pt(legacy)


# ------------------------------------------------------------------------------------------ other tools' layouts
def torch111_zip(src: Path, dst: Path) -> None:
    """Rewrite a torch zip with only the records old torch wrote (version, data.pkl, data/N), as A1111 knows them."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if webui_rules.SAFE_ZIP_NAME.match(info.filename):
                zout.writestr(info.filename, zin.read(info.filename))


def test_reads_a1111_pt_as_a1111_writes_it(tmp_path: Path) -> None:
    vec = _rand(4, 768).requires_grad_(True)  # A1111 trains embedding.vec in place
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "a1111-name", "step": 99,
            "sd_checkpoint": "abcdef1234", "sd_checkpoint_name": "v1-5-pruned"}
    torch.save(data, tmp_path / "modern.pt")
    torch111_zip(tmp_path / "modern.pt", tmp_path / "a1111.pt")
    webui_rules.check_pt(tmp_path / "a1111.pt")
    for p in (tmp_path / "modern.pt", tmp_path / "a1111.pt"):
        got = load_embedding(p)
        assert got.name == "a1111-name" and got.step == 99 and got.sd_checkpoint == "abcdef1234"
        assert same_bits(got.vectors["*"], vec.detach()) and not got.vectors["*"].requires_grad
    assert webui_rules.load_embedding_file(tmp_path / "a1111.pt").name == "a1111"


def test_reads_old_parameterdict_layout(tmp_path: Path) -> None:
    vec = _rand(2, 768)
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": pd, "name": "old"}, tmp_path / "m.pt")
    torch111_zip(tmp_path / "m.pt", tmp_path / "old.pt")
    webui_rules.check_pt(tmp_path / "old.pt")  # ParameterDict, _rebuild_parameter and set are allowed there
    assert same_bits(webui_rules.load_embedding_file(tmp_path / "old.pt").vec, vec)
    got = load_embedding(tmp_path / "old.pt")
    assert got.name == "old" and same_bits(got.vectors["*"], vec) and type(got.vectors["*"]) is torch.Tensor


def test_reads_diffusers_learned_embeds_bin(tmp_path: Path) -> None:
    vec = _rand(768)
    torch.save({"<cat-toy>": vec}, tmp_path / "learned_embeds.bin")
    got = load_embedding(tmp_path / "learned_embeds.bin")
    assert got.name == "learned_embeds" and got.widths == {"*": 768} and same_bits(got.vectors["*"][0], vec)


def test_reads_kohya_and_civitai_safetensors(tmp_path: Path) -> None:
    vec = _rand(5, 1024).half()
    safetensors.torch.save_file({"emb_params": vec}, tmp_path / "kohya.safetensors")
    got = load_embedding(tmp_path / "kohya.safetensors")
    assert got.name == "kohya" and got.step is None and torch.equal(got.vectors["*"], vec.float())
    xl = {"clip_g": _rand(3, 1280), "clip_l": _rand(3, 768)}
    safetensors.torch.save_file(xl, tmp_path / "xl.safetensors", metadata={"modelspec.title": "x"})
    got = load_embedding(tmp_path / "xl.safetensors")
    assert got.meta == {"modelspec.title": "x"} and got.num_vectors == 3
    assert same_bits(got.vectors["clip_g"], xl["clip_g"]) and same_bits(got.vectors["clip_l"], xl["clip_l"])


# A small encoder following image_embedding.py's insert_image_data_embed, to build a WebUI-made image.
def webui_style_edge_image(image: Image.Image, data: dict) -> Image.Image:
    text = json.dumps(data, default=lambda t: {"TORCHTENSOR": t.tolist()})
    raw = np.frombuffer(zlib.compress(text.encode(), level=9), np.uint8)
    h = image.height
    size = raw.size + (h - raw.size % h)
    size += 3 * h - size % (3 * h)
    blocks = [np.resize(raw & 0x0F, size).reshape(h, -1, 3), np.resize(raw >> 4, size).reshape(h, -1, 3)]
    first = list(data["string_to_param"].values())[0][0][:1024].numpy()
    shades = (np.abs(first) / np.abs(first).max() * 255).astype(np.uint8)
    out = []
    for block, seq in zip(blocks, (shades, shades[::-1])):
        canvas = Image.new("RGB", (block.shape[1], h))
        draw, i = ImageDraw.Draw(canvas), 0
        for x in range(-6, block.shape[1], 8):
            for row, y in enumerate(range(-6, h, 8)):
                dx = 4 if row % 2 == 0 else 0
                s = int(seq[i % len(seq)])
                i += 1
                draw.ellipse((x + dx, y, x + dx + 6, y + 6), fill=(s, s, s))
        styled = block ^ (np.array(canvas).astype(np.uint8) & 0xF0)
        out.append(styled ^ webui_rules.lcg_low_nibbles(styled.size).reshape(styled.shape))
    w = out[0].shape[1]
    result = Image.new("RGB", (image.width + 2 * w + 2, h), (0, 0, 0))
    result.paste(Image.fromarray(out[0], "RGB"), (0, 0))
    result.paste(image, (w + 1, 0))
    result.paste(Image.fromarray(out[1], "RGB"), (w + 1 + image.width + 1, 0))
    return result


def test_lcg_stream_matches_webui_reference() -> None:
    ref = [253, 242, 127, 44, 157, 27, 239, 133, 38, 79]  # first values of image_embedding.py's own self-test
    assert list(webui_rules.lcg_low_nibbles(10)) == [v & 0x0F for v in ref]
    assert np.array_equal(png_embedding._key_nibbles(20000), webui_rules.lcg_low_nibbles(20000))


def test_reads_webui_images_edges_and_chunk(tmp_path: Path) -> None:
    vec = _rand(2, 768)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "pic-name", "step": 7,
            "sd_checkpoint": None, "sd_checkpoint_name": None}
    picture = Image.new("RGB", (96, 64), (200, 120, 40))
    edges = webui_style_edge_image(picture, data)
    edges.save(tmp_path / "edges.png")  # no text chunk: only the hidden data
    edges.save(tmp_path / "edges.webp", lossless=True)
    for p in (tmp_path / "edges.png", tmp_path / "edges.webp"):
        assert webui_rules.load_embedding_file(p).name == "pic-name"
        got = load_embedding(p)
        assert got.name == "pic-name" and got.step == 7 and same_bits(got.vectors["*"], vec)
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(png_embedding.to_json(data).encode()))
    picture.save(tmp_path / "chunk.png", pnginfo=info)
    assert load_embedding(tmp_path / "chunk.png").name == "pic-name"


def test_our_png_edges_survive_losing_the_chunk(tmp_path: Path) -> None:
    for emb in (sd1(), sdxl()):
        path = save_embedding(emb, tmp_path / emb.name, "png", preview=Image.new("RGB", (80, 80), (10, 200, 90)))
        with Image.open(path) as im:
            assert im.width > 80 and "sd-ti-embedding" in im.text
            stripped = tmp_path / f"{emb.name}-stripped.png"
            im.convert("RGB").save(stripped)  # no text chunks any more
        assert webui_rules.load_embedding_file(stripped) is not None
        assert_same_vectors(load_embedding(stripped), emb)
    plain = save_embedding(sd1(), tmp_path / "plain.png", "png", edge_data=False)
    with Image.open(plain) as im:
        assert im.size == (256, 256)


# ------------------------------------------------------------------------------------------ refusals
def _bad_files(d: Path) -> dict[str, Path]:
    files = {}
    files["empty.pt"] = d / "empty.pt"
    files["empty.pt"].write_bytes(b"")
    files["garbage.pt"] = d / "garbage.pt"
    files["garbage.pt"].write_bytes(os.urandom(300))
    files["garbage.safetensors"] = d / "garbage.safetensors"
    files["garbage.safetensors"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    good = save_embedding(sd1(), d / "good.safetensors")
    files["truncated.safetensors"] = d / "truncated.safetensors"
    files["truncated.safetensors"].write_bytes(good.read_bytes()[:-100])
    files["two.pt"] = d / "two.pt"
    torch.save({"<a>": _rand(768), "<b>": _rand(768)}, files["two.pt"], _use_new_zipfile_serialization=False)
    files["two-terms.pt"] = d / "two-terms.pt"
    torch.save({"string_to_param": {"*": _rand(1, 768), "#": _rand(1, 768)}}, files["two-terms.pt"],
               _use_new_zipfile_serialization=False)
    files["two.safetensors"] = d / "two.safetensors"
    safetensors.torch.save_file({"a": _rand(1, 768), "b": _rand(1, 768)}, files["two.safetensors"])
    files["notensor.pt"] = d / "notensor.pt"
    torch.save({"name": "x", "step": 3}, files["notensor.pt"], _use_new_zipfile_serialization=False)
    files["bare.pt"] = d / "bare.pt"
    torch.save(_rand(2, 768), files["bare.pt"], _use_new_zipfile_serialization=False)
    files["picture.png"] = d / "picture.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(files["picture.png"])
    files["badchunk.png"] = d / "badchunk.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", "%%%not base64 json")
    Image.new("RGB", (8, 8)).save(files["badchunk.png"], pnginfo=info)
    files["x.preview.png"] = d / "x.preview.png"
    save_embedding(sd1(), d / "x.png", "png").rename(files["x.preview.png"])
    files["notes.txt"] = d / "notes.txt"
    files["notes.txt"].write_text("hello")
    return files


def test_bad_files_raise_naming_the_file(tmp_path: Path) -> None:
    for label, path in _bad_files(tmp_path).items():
        with pytest.raises(EmbeddingError) as info:
            load_embedding(path)
        assert path.name in str(info.value), (label, str(info.value))
    with pytest.raises(EmbeddingError, match="missing.pt"):
        load_embedding(tmp_path / "missing.pt")


def test_oracle_also_refuses_or_skips_them(tmp_path: Path) -> None:
    skipped = {"empty.pt", "picture.png", "x.preview.png", "notes.txt"}
    for label, path in _bad_files(tmp_path).items():
        if label in skipped:
            assert webui_rules.load_embedding_file(path) is None, label
        elif label == "garbage.pt":
            with pytest.raises(webui_rules.SafeCheckFailed):
                webui_rules.load_embedding_file(path)
        else:  # the legacy-format .pt fixtures pass safe.py: the layout rules refuse them
            with pytest.raises(webui_rules.WebUIRejected):
                webui_rules.load_embedding_file(path)


def test_check_fits_and_for_encoders() -> None:
    emb = sd1("foo")
    check_fits(emb, {"clip_l": 768})
    with pytest.raises(EmbeddingError, match=r"embedding 'foo' has width 768 but this model's clip_l is 1024"):
        check_fits(emb, {"clip_l": 1024})
    with pytest.raises(EmbeddingError, match="'foo'.*one tensor.*clip_l, clip_g"):
        check_fits(emb, {"clip_l": 768, "clip_g": 1280})
    assert set(emb.for_encoders(["transformer"])) == {"transformer"}
    xl = sdxl("bar")
    check_fits(xl, {"clip_l": 768, "clip_g": 1280})
    with pytest.raises(EmbeddingError, match=r"'bar' has width 1280 but this model's clip_g is 1024"):
        check_fits(xl, {"clip_l": 768, "clip_g": 1024})
    with pytest.raises(EmbeddingError, match="'bar' has no vectors for t5"):
        xl.for_encoders(["clip_l", "t5"])
    with pytest.raises(EmbeddingError, match="different numbers of vectors"):
        Embedding("baz", {"clip_l": _rand(2, 768), "clip_g": _rand(3, 1280)})
    with pytest.raises(EmbeddingError, match="'qux'.*only as SDXL"):
        save_embedding(Embedding("qux", {"a": _rand(1, 8), "b": _rand(1, 8)}), "/nonexistent/qux")


# ------------------------------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("kind", ["safetensors", "pt", "png"])
def test_overwrite_is_atomic(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_embedding(sd1("v1"), tmp_path / "emb", kind)
    save_embedding(sd1("v2"), tmp_path / "emb", kind)
    assert load_embedding(path).name == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    before = path.read_bytes()

    def half_then_fail(*args, **kwargs):
        target = next(a for a in args if isinstance(a, (str, Path)) and ".tmp" in str(a))
        Path(target).write_bytes(b"partial")
        raise OSError("disk full")

    target = {"safetensors": "safetensors.torch.save_file", "pt": "torch.save",
              "png": "scal_sdt.textual_inversion.png_embedding.write_png"}[kind]
    monkeypatch.setattr(target, half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_embedding(sd1("v3"), tmp_path / "emb", kind)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_embedding(path).name == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
