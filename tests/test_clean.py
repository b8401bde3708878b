"""Dataset cleaning: a drawn face the Haar cascade accepts is found and cropped around; drawn text is flagged and
inpainted, shapes and polka dots are not; a watermark classifier flags by its score; exact and near duplicates
are grouped and the extra copies moved with their captions; originals never change."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

cv2 = pytest.importorskip("cv2", reason="cleaning needs opencv-python-headless")

from scal_sdt.tagging.clean import CleanConfig, clean_folder  # noqa: E402
from scal_sdt.tagging.duplicates import dhash, groups, hamming  # noqa: E402
from scal_sdt.tagging.text_regions import TextDetector  # noqa: E402


def drawn_face(size=256, cx=128, cy=128, r=50, bg=(40, 40, 40)) -> Image.Image:
    """A face OpenCV's frontal-face cascade accepts: skin oval, dark eyes and brows, nose, mouth."""
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    d.ellipse([cx - r, cy - int(r * 1.3), cx + r, cy + int(r * 1.3)], fill=(200, 170, 150))
    ey, ex = cy - int(r * 0.25), int(r * 0.4)
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - int(r * 0.2), ey - int(r * 0.1), cx + sx * ex + int(r * 0.2), ey + int(r * 0.1)],
                  fill=(30, 30, 30))
        d.rectangle([cx + sx * ex - int(r * 0.25), ey - int(r * 0.3), cx + sx * ex + int(r * 0.25),
                     ey - int(r * 0.22)], fill=(60, 40, 30))
    d.polygon([(cx, ey + int(r * 0.1)), (cx - int(r * 0.12), cy + int(r * 0.3)), (cx + int(r * 0.12), cy + int(r * 0.3))],
              fill=(170, 140, 120))
    d.ellipse([cx - int(r * 0.35), cy + int(r * 0.5), cx + int(r * 0.35), cy + int(r * 0.65)], fill=(120, 50, 50))
    return im.filter(ImageFilter.GaussianBlur(2))


def with_text(image: Image.Image, text="watermark.com 2024", xy=(20, 220)) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).text(xy, text, fill=(20, 20, 20), font=ImageFont.load_default(size=22), stroke_width=2,
                             stroke_fill=(255, 255, 255))
    return out


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_face_crop_is_centred_on_the_face(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    canvas = Image.new("RGB", (600, 400), (40, 40, 40))
    canvas.paste(drawn_face(), (300, 100))  # face centre at (428, 228)
    canvas.save(data / "portrait.png")
    (data / "portrait.txt").write_text("1girl, smile")
    Image.new("RGB", (300, 300), (90, 120, 200)).save(data / "sky.png")
    before = {p.name: digest(p) for p in data.iterdir()}
    report = clean_folder(CleanConfig(dir=str(data), face_crop=True, resolution=128, face_scale=2.0))
    out = tmp_path / "data_clean"
    assert report.crops == [str(out / "portrait.png")] and report.no_face == [str(data / "sky.png")]
    crop = Image.open(out / "portrait.png")
    assert crop.size == (128, 128)
    assert (out / "portrait.txt").read_text() == "1girl, smile"
    # the face (skin colour) is in the middle of the crop
    a = np.asarray(crop, dtype=np.float32)
    skin = (np.abs(a - np.array([200, 170, 150])).sum(axis=2) < 60)
    ys, xs = np.nonzero(skin)
    assert abs(xs.mean() - 64) < 10 and abs(ys.mean() - 64) < 12
    assert {p.name: digest(p) for p in data.iterdir()} == before  # originals untouched


def test_text_is_found_on_faces_and_shapes_but_not_on_dots_or_plain_pictures(tmp_path):
    from scal_sdt.toy_world.world import Scene, render

    detector = TextDetector()
    face = drawn_face()
    dots = render(Scene("circle", "red", "blue", "large", (0.5, 0.5), "dots")).resize((256, 256))
    plain = render(Scene("star", "yellow", "white", "large", (0.5, 0.5))).resize((256, 256))
    for clean in (face, dots, plain):
        assert detector.find(np.asarray(clean)) == []
        boxes = detector.find(np.asarray(with_text(clean)))
        assert len(boxes) == 1
        x, y, w, h = boxes[0]
        assert 10 <= x <= 30 and 215 <= y <= 235 and w > 150


def test_text_flagged_inpainted_and_moved(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    base = drawn_face()
    with_text(base).save(data / "signed.png")
    (data / "signed.txt").write_text("portrait")
    base.save(data / "clean.png")
    report = clean_folder(CleanConfig(dir=str(data), text=True, inpaint_text=True, inpaint_max_area=0.1,
                                      out=str(tmp_path / "out")))
    assert list(report.text) == [str(data / "signed.png")]
    cleaned = np.asarray(Image.open(tmp_path / "out" / "signed.png"), dtype=np.float32)
    original = np.asarray(base, dtype=np.float32)
    texted = np.asarray(with_text(base), dtype=np.float32)
    assert np.abs(cleaned - original).mean() < 0.3 * np.abs(texted - original).mean()  # the text is mostly gone
    report = clean_folder(CleanConfig(dir=str(data), text=True, move_flagged=True, out=str(tmp_path / "out2")))
    assert report.moved == [(str(data / "signed.png"), str(data / "flagged" / "text" / "signed.png"))]
    assert (data / "flagged" / "text" / "signed.txt").read_text() == "portrait"
    assert (data / "clean.png").exists() and not (data / "signed.png").exists()


def test_watermark_classifier_flags_by_score(tmp_path):
    import torch
    from torch import nn

    class BrightCorner(nn.Module):  # "watermark" score = brightness of the bottom-right corner (ImageNet-normalised)
        def forward(self, x):
            return torch.sigmoid(x[:, :, -8:, -8:].mean(dim=(1, 2, 3))[:, None] * 4)

    model = tmp_path / "wm.onnx"
    torch.onnx.export(BrightCorner(), (torch.zeros(1, 3, 64, 64),), str(model), input_names=["input"],
                      output_names=["score"], dynamic_axes={"input": {0: "b"}, "score": {0: "b"}}, dynamo=False)
    data = tmp_path / "data"
    data.mkdir()
    dark = Image.new("RGB", (64, 64), (10, 10, 10))
    marked = dark.copy()
    ImageDraw.Draw(marked).rectangle([52, 52, 63, 63], fill=(255, 255, 255))
    dark.save(data / "a.png")
    marked.save(data / "b.png")
    report = clean_folder(CleanConfig(dir=str(data), watermark_model=str(model)))
    assert list(report.watermark) == [str(data / "b.png")] and report.watermark[str(data / "b.png")] > 0.9


def test_duplicates_exact_and_near_keep_the_largest(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    a = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((256, 256), Image.Resampling.BICUBIC)
    b = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((256, 256), Image.Resampling.BICUBIC)
    a.save(data / "a.png")
    (data / "sub" / "a_copy.png").write_bytes((data / "a.png").read_bytes())  # same bytes
    a.resize((128, 128)).save(data / "a_small.jpg", quality=80)  # re-encoded, smaller
    b.save(data / "b.png")
    (data / "a_small.txt").write_text("tags")
    assert hamming(dhash(a), dhash(a.resize((128, 128)))) <= 6 and hamming(dhash(a), dhash(b)) > 12
    report = clean_folder(CleanConfig(dir=str(data), duplicates=True, move_flagged=True))
    assert len(report.duplicate_groups) == 1
    group = report.duplicate_groups[0]
    assert group[0] == str(data / "a.png") and set(group[1:]) == {str(data / "sub" / "a_copy.png"),
                                                                 str(data / "a_small.jpg")}
    assert (data / "flagged" / "duplicate" / "a_small.txt").read_text() == "tags"
    assert sorted(p.name for p in data.glob("*.png")) == ["a.png", "b.png"]
    exact = clean_folder(CleanConfig(dir=str(data / "flagged"), duplicates=True, near_distance=-1))
    assert exact.duplicate_groups == []  # a_copy and a_small differ in bytes


def test_groups_are_transitive():
    assert groups([("x", "1", 0b0000), ("y", "2", 0b0011), ("z", "3", 0b1111), ("w", "4", (1 << 40) - 1)], 2) == \
        [["x", "y", "z"]]


def test_bad_input_is_refused_or_skipped(tmp_path):
    with pytest.raises(ValueError, match="nothing to do"):
        CleanConfig(dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="face model"):
        clean_folder(CleanConfig(dir=str(tmp_path), face_crop=True, face_model=str(tmp_path / "none.onnx")))
    (tmp_path / "bad.png").write_bytes(b"zz")
    report = clean_folder(CleanConfig(dir=str(tmp_path), duplicates=True))
    assert report.failed == [(str(tmp_path / "bad.png"), "not an image file (unknown or damaged format)")]
