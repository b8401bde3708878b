"""Dataset cleaning: face-centred crops at the training resolution, text and watermark flags (with text inpainted
away on request), exact and near duplicates. Originals are never changed: crops and cleaned copies go to an output
folder; flagged images are only moved (with their captions) into ``DIR/flagged/<reason>/`` when asked."""
from __future__ import annotations

import io
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import check_bounds, option
from ..files import atomic_path
from ..training.images import image_files
from ..training.report import Reporter
from .duplicates import dhash, groups
from .faces import FaceDetector, face_crop
from .preprocess import content_hash, on_white
from .text_regions import TextDetector, area_fraction, inpaint
from .watermark import WatermarkClassifier


@dataclass(kw_only=True)
class CleanConfig:
    dir: str = option(help="the folder of images to clean", positional=True, group="dataset", folder=True)
    out: str = option("", "where crops and cleaned copies go ('' = DIR_clean beside DIR); originals are not changed",
                      group="dataset", folder=True)
    recursive: bool = option(True, "sub-folders too", group="dataset")
    caption_extension: str = option(".txt", "captions copied and moved with their image", group="dataset")

    face_crop: bool = option(False, "write a square crop centred on the largest face of each image", group="faces")
    face_model: str = option("", "a YuNet .onnx (face_detection_yunet_*.onnx) or a cascade .xml; '' = OpenCV's "
                             "frontal-face Haar cascade", group="faces")
    resolution: int = option(512, "side of the face crops in pixels (the training resolution)", min=64, max=4096,
                             group="faces")
    face_scale: float = option(2.5, "crop side = this x the face's size (more = more head and shoulders)", min=1.0,
                               max=10.0, group="faces")
    all_faces: bool = option(False, "one crop per face instead of the largest only", group="faces")

    text: bool = option(False, "flag images with text (signatures, watermarks, speech bubbles)", group="text and "
                        "watermarks")
    text_model: str = option("", "an OpenCV DB (.onnx) or EAST (.pb) text detector; '' = MSER character lines",
                             group="text and watermarks")
    inpaint_text: bool = option(False, "write a copy with small text areas inpainted away to the output folder",
                                group="text and watermarks")
    inpaint_max_area: float = option(0.05, "inpaint only when the text covers at most this fraction of the image",
                                     min=0.0, max=1.0, group="text and watermarks")
    watermark_model: str = option("", "an ONNX watermark classifier (NCHW RGB, ImageNet mean/std); '' = off",
                                  group="text and watermarks")
    watermark_threshold: float = option(0.5, "score above which an image is flagged as watermarked", min=0.0,
                                        max=1.0, group="text and watermarks")

    duplicates: bool = option(False, "find duplicates: the same file content, or nearly the same picture",
                              group="duplicates")
    near_distance: int = option(6, "near duplicates: at most this many of 64 hash bits differ (-1 = exact only)",
                                min=-1, max=32, group="duplicates")

    move_flagged: bool = option(False, "move flagged images and the extra copies of duplicates (with captions) into "
                                "DIR/flagged/<reason>/; off = only report them", group="actions")
    workers: int = option(4, "threads", min=1, max=64, group="actions")

    def __post_init__(self):
        check_bounds(self)
        if not self.dir:
            raise ValueError("dir is required: the folder of images to clean")
        if not (self.face_crop or self.text or self.watermark_model or self.duplicates):
            raise ValueError("nothing to do: choose face_crop, text, watermark_model or duplicates")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(str(Path(self.dir).resolve()) + "_clean")


@dataclass
class CleanReport:
    folder: str
    out: str
    images: int = 0
    crops: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    text: dict[str, list] = field(default_factory=dict)  # path -> boxes
    inpainted: list[str] = field(default_factory=list)
    watermark: dict[str, float] = field(default_factory=dict)  # path -> score
    duplicate_groups: list[list[str]] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{'interrupted' if self.interrupted else 'done'}: {self.images} images in {self.seconds:.1f}s; "
                 f"{len(self.crops)} face crop(s), {len(self.no_face)} without a face; {len(self.text)} with text "
                 f"({len(self.inpainted)} inpainted); {len(self.watermark)} watermarked; "
                 f"{len(self.duplicate_groups)} duplicate group(s); {len(self.moved)} moved; output in {self.out}"]
        lines += [f"text: {p}" for p in self.text] + [f"watermark ({s:.2f}): {p}" for p, s in self.watermark.items()]
        lines += ["duplicates: " + " = ".join(g) for g in self.duplicate_groups]
        lines += [f"moved {a} -> {b}" for a, b in self.moved] + [f"skipped {p}: {e}" for p, e in self.failed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {k: (v if not isinstance(v, list) or not v or not isinstance(v[0], tuple) else [list(t) for t in v])
                for k, v in self.__dict__.items()}


def _save(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _copy_caption(image: Path, target: Path, ext: str) -> None:
    caption = image.with_suffix(ext)
    if caption.is_file():
        with atomic_path(target.with_suffix(ext)) as tmp:
            shutil.copyfile(caption, tmp)


class _Tools(threading.local):
    """Detectors per thread (OpenCV's are not promised to be thread-safe)."""

    def __init__(self, cfg: CleanConfig):
        self.faces = FaceDetector(cfg.face_model) if cfg.face_crop else None
        self.text = TextDetector(cfg.text_model) if cfg.text else None


def clean_folder(cfg: CleanConfig, reporter: Reporter | None = None) -> CleanReport:
    reporter = reporter or Reporter()
    t0 = time.time()
    root, out = Path(cfg.dir), cfg.out_dir()
    files = image_files(root, cfg.recursive)
    files = [p for p in files if "flagged" not in p.relative_to(root).parts[:1]]
    report = CleanReport(str(root), str(out), images=len(files))
    tools = _Tools(cfg)  # built here first: a bad model file is refused before any work; again in each thread
    watermark = WatermarkClassifier(cfg.watermark_model) if cfg.watermark_model else None
    lock = threading.Lock()
    hashes: list[tuple[str, str, int]] = []
    sizes: dict[str, int] = {}

    def one(path: Path) -> None:
        rel = path.relative_to(root)
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                image = on_white(im).copy()
        except UnidentifiedImageError:
            with lock:
                report.failed.append((str(path), "not an image file (unknown or damaged format)"))
            return
        except Exception as e:  # a truncated or unreadable file
            with lock:
                report.failed.append((str(path), f"damaged image ({type(e).__name__}: {e})"))
            return
        rgb = np.asarray(image)
        if cfg.duplicates:
            with lock:
                hashes.append((str(path), content_hash(data), dhash(image)))
                sizes[str(path)] = image.width * image.height
        if cfg.face_crop:
            faces = tools.faces.find(rgb)
            if not faces:
                with lock:
                    report.no_face.append(str(path))
            for k, face in enumerate(faces if cfg.all_faces else faces[:1]):
                target = out / rel.parent / (f"{rel.stem}_face{k}.png" if cfg.all_faces else f"{rel.stem}.png")
                _save(face_crop(image, face, cfg.resolution, cfg.face_scale), target)
                _copy_caption(path, target, cfg.caption_extension)
                with lock:
                    report.crops.append(str(target))
        if cfg.text:
            boxes = tools.text.find(rgb)
            if boxes:
                with lock:
                    report.text[str(path)] = [list(b) for b in boxes]
                if cfg.inpaint_text and area_fraction(boxes, rgb.shape) <= cfg.inpaint_max_area:
                    target = out / rel.parent / f"{rel.stem}.png"
                    _save(Image.fromarray(inpaint(rgb, boxes)), target)
                    _copy_caption(path, target, cfg.caption_extension)
                    with lock:
                        report.inpainted.append(str(target))
        if watermark is not None:
            score = float(watermark.scores(watermark.prepare(image)[None])[0])
            if score >= cfg.watermark_threshold:
                with lock:
                    report.watermark[str(path)] = score

    reporter.begin("clean", len(files))
    done = 0
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="scal-sdt-clean") as ex:
        futures = [ex.submit(one, p) for p in files]
        for f in futures:
            f.result()
            done += 1
            reporter.step({"step": done})
            if reporter.should_stop():
                report.interrupted = True
                for g in futures:
                    g.cancel()
                break
    if cfg.duplicates and not report.interrupted:
        found = groups(sorted(hashes), cfg.near_distance)
        report.duplicate_groups = [sorted(g, key=lambda p: (-sizes[p], p)) for g in found]  # the kept one first
    if cfg.move_flagged and not report.interrupted:
        _move_flagged(cfg, root, report)
    report.seconds = time.time() - t0
    reporter.end()
    return report


def _move_flagged(cfg: CleanConfig, root: Path, report: CleanReport) -> None:
    plan: dict[str, str] = {}
    for g in report.duplicate_groups:
        for p in g[1:]:
            plan.setdefault(p, "duplicate")
    for p in report.watermark:
        plan.setdefault(p, "watermark")
    for p in report.text:
        if str(Path(cfg.out_dir()) / Path(p).relative_to(root).parent / f"{Path(p).stem}.png") not in report.inpainted:
            plan.setdefault(p, "text")
    for p, reason in sorted(plan.items()):
        src = Path(p)
        dst = root / "flagged" / reason / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        caption = src.with_suffix(cfg.caption_extension)
        if caption.is_file():
            os.replace(caption, dst.with_suffix(cfg.caption_extension))
        report.moved.append((str(src), str(dst)))
