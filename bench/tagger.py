"""Tagger throughput: the whole pipeline (read + decode + preprocess + inference + caption write) next to the
model-only limit (session.run on batches made beforehand) and the reference way (SmilingWolf's demo: one image at
a time, prepared then run, batch 1), all on the same model, images and provider in one run.

The model has WD14's exact signature (``input_1:0`` NHWC BGR 0-255 at 448 px, ``predictions_sigmoid``, a
selected_tags.csv of 10,000 tags) around a ConvNeXt-T body with random weights: smaller than the real WD14 v3
nets, so the model-only limit is higher and the ratio harder to reach than with a real one. The images are a few
hundred JPEGs of mixed sizes and aspect ratios (the kind of folder people tag).

    python bench/tagger.py                        # 200 images, CPU
    python bench/tagger.py --images 400 --provider cuda --batch-size 32
    python bench/tagger.py --model PATH           # a real tagger folder instead
Prints images/s of each and the ratios pipeline/model-only (goal >= 0.8) and pipeline/reference.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
N_TAGS = 10_000


def make_model(folder: Path, side: int) -> Path:
    import torch
    from torch import nn
    from torchvision.models import convnext_tiny

    torch.manual_seed(0)
    body = convnext_tiny(num_classes=N_TAGS)

    class WD14(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):  # NHWC BGR 0-255, as WD14; scores mostly low, as a real tagger's are
            return torch.sigmoid(self.body(x.permute(0, 3, 1, 2).flip(1) / 127.5 - 1) * 4 - 6)

    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(WD14().eval(), (torch.zeros(1, side, side, 3),), str(folder / "model.onnx"), dynamo=False,
                      input_names=["input_1:0"], output_names=["predictions_sigmoid"], opset_version=17,
                      dynamic_axes={"input_1:0": {0: "batch"}, "predictions_sigmoid": {0: "batch"}})
    with open(folder / "selected_tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        for i in range(N_TAGS):
            w.writerow([i, ["general", "sensitive", "questionable", "explicit"][i] if i < 4 else f"tag_{i}",
                        9 if i < 4 else 4 if i < 500 else 0, 1])
    return folder


def make_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(768, 1024), (1024, 768), (832, 1216), (1024, 1024), (640, 960), (1536, 1024)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)  # smooth content, like art, not noise
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=92)


def reference(tagger, files) -> float:
    """SmilingWolf's demo loop: open, prepare, run one image at a time."""
    from onnx_taggers import reference_wd14_prepare

    t0 = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            row = reference_wd14_prepare(im.convert("RGBA"), tagger.side)
        tagger.session.run([tagger.output_name], {tagger.input_name: row[None]})
    return len(files) / (time.perf_counter() - t0)


def model_only(tagger, n: int, batch: int) -> float:
    rows = np.random.default_rng(1).uniform(0, 255, (batch, tagger.side, tagger.side, 3)).astype(np.float32)
    tagger.run(rows)  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch, n - done)
        tagger.run(rows[:k])
        done += k
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--side", type=int, default=448)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--provider", default="auto")
    ap.add_argument("--model", default="", help="a real tagger folder (default: a ConvNeXt-T with WD14's signature)")
    ap.add_argument("--reference-images", type=int, default=40, help="images for the slow reference loop")
    args = ap.parse_args()

    from scal_sdt.tagging.config import TagConfig
    from scal_sdt.tagging.model import TaggerPool
    from scal_sdt.tagging.run import tag_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or str(make_model(tmp / "model", args.side))
        make_images(tmp / "images", args.images)
        pool = TaggerPool(idle_seconds=0)
        tagger = pool.get(model, args.provider)
        print(f"model: {tagger.describe()}")
        files = sorted((tmp / "images").glob("*.jpg"))
        limit = model_only(tagger, args.images, args.batch_size)
        cfg = TagConfig(dir=str(tmp / "images"), model=model, provider=args.provider, batch_size=args.batch_size,
                        workers=args.workers, cache_dir="", existing="overwrite")
        report = tag_folder(cfg, pool=pool)
        assert report.written == args.images and not report.failed, report.summary()
        ours = report.images_per_second
        ref = reference(tagger, files[:args.reference_images])
    print(f"model-only limit   {limit:8.2f} images/s (batch {args.batch_size})")
    print(f"pipeline (ours)    {ours:8.2f} images/s ({args.workers} workers, {args.images} images)")
    print(f"reference, batch 1 {ref:8.2f} images/s")
    print(f"ratio pipeline / model-only {ours / limit:.2f}   pipeline / reference {ours / ref:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
