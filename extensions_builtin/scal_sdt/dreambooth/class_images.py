"""Prior preservation's class images: what the model itself draws for the class prompt, generated once into the class
folder (with the prompt as caption) and reused by later runs."""
from __future__ import annotations

from pathlib import Path

from ..files import atomic_path, atomic_write_text
from ..training.images import image_files
from ..training.report import Reporter


def ensure_class_images(sample, folder: str | Path, prompt: str, count: int, size: int, steps: int, cfg_scale: float,
                        seed: int, reporter: Reporter, batch: int = 4) -> int:
    """Generate the images ``folder`` lacks to hold ``count``, with ``sample(prompts, **settings)`` (the host's own
    sampler); returns how many were made. Each is written atomically with its caption, so an interrupted run keeps
    what it made."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    have = len(image_files(folder))
    missing = max(0, count - have)
    if not missing:
        return 0
    reporter.message(f"class images: {have} in {folder}, generating {missing} for {prompt!r}")
    made = 0
    while made < missing and not reporter.should_stop():
        n = min(batch, missing - made)
        images = sample([prompt] * n, steps=steps, cfg_scale=cfg_scale, seed=seed + have + made, width=size,
                        height=size)
        for image in images:
            path = folder / f"class-{have + made:05d}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            atomic_write_text(path.with_suffix(".txt"), prompt)
            made += 1
        reporter.message(f"class images: {made}/{missing}")
    return made
