"""Setting up a run's data, shared by every trainer: scan the folder, hold out validation images, show the
loss weights, cache the latents once with the VAE on the device."""
from __future__ import annotations

from pathlib import Path

from ..host.base import Host
from ..toy_world.concepts import make_held_out_colour_set
from .options import mask_range, size_list, weight_map
from .dataset import LatentDataset
from .images import folder_weight, scan_folder
from .mask_preview import write_mask_previews
from .report import Reporter


def run_dir_for(cfg) -> Path:
    """The run's log folder: --log-dir, else scal-sdt-runs/NAME."""
    return Path(cfg.log_dir) if cfg.log_dir else Path("scal-sdt-runs") / cfg.name


RUN_RECORD = "run.json"


def write_run_record(cfg, method: str, host: Host) -> Path:
    """``run.json`` in the run's folder: the method, the config as the run uses it and the model, so that the run's
    saved steps can be compared later (`scal-sdt evaluate`)."""
    import json

    from ..config import to_dict
    from ..files import atomic_write_text

    path = run_dir_for(cfg) / RUN_RECORD
    atomic_write_text(path, json.dumps({"method": method, "config": to_dict(cfg), "family": host.family.name,
                                        "resolution": cfg.resolution or host.native_resolution}, indent=1))
    return path


def read_run_record(run_dir: Path) -> dict:
    import json

    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {RUN_RECORD}: not a run folder of this version (train again, or "
                                f"give the run's log folder)")
    return json.loads(path.read_text(encoding="utf-8"))


def warn_long_captions(items, reporter: Reporter) -> int:
    """Say how many captions are longer than the text encoder's 75 tokens (they are encoded in 75-token chunks, as
    the WebUI does, but the template's words take room too and a tag split across two chunks loses its context)."""
    from ..host.tokenizer import CHUNK_TOKENS, clip_tokenizer

    tokenizer = clip_tokenizer()
    lengths = [len(tokenizer.encode(item.caption)) for item in items]
    long = [n for n in lengths if n > CHUNK_TOKENS]
    if long:
        reporter.message(f"{len(long)} of {len(items)} caption(s) are longer than the text encoder's {CHUNK_TOKENS} "
                         f"tokens (the longest {max(long)}); they are encoded in {CHUNK_TOKENS}-token chunks as the "
                         f"WebUI does, which weakens what spans two chunks — shorten them or use --keep-tokens with "
                         f"--shuffle-tags")
    return len(long)


def prepare_data(cfg, host: Host, reporter: Reporter, resolution: int,
                 caption_ext: str = ".txt") -> tuple[LatentDataset, LatentDataset | None]:
    """Scan the folder (captions: NAME + ``caption_ext`` beside each image), report what was skipped, hold out the
    validation images, cache the latents with the VAE on the device. Returns the training set and the validation
    set (or None)."""
    data = cfg.data
    if data == "demo":
        from . import distributed

        data = run_dir_for(cfg) / "demo-data"
        if distributed.current().main:  # several processes: one writes, all read
            make_held_out_colour_set(data)
        distributed.current().barrier()
        reporter.message(f"demo data set: shapes in the toy world's held-out colour (pink), captioned with [name] "
                         f"where the colour goes, in {data}")
    if not data:
        raise ValueError("data is required: a folder of images (with .txt captions), or 'demo'")
    scan = scan_folder(Path(data), caption_ext)
    for path, reason in scan.skipped:
        reporter.message(f"skipped {path}: {reason}")
    items, held = scan.items, []
    if weights := weight_map(getattr(cfg, "folder_weights", "")):
        import dataclasses

        items = [dataclasses.replace(item, weight=folder_weight(item.path, Path(data), weights)) for item in items]
        named = {w for w in weights if not any(w in (p.name, p.name.partition("_")[2])
                                               for item in items for p in item.path.relative_to(data).parents)}
        if named:
            reporter.message(f"folder_weights: no folder named {', '.join(sorted(named))} under {data}")
    warn_long_captions(items, reporter)
    if cfg.validation_data:
        held = scan_folder(Path(cfg.validation_data), caption_ext).items
    elif cfg.validation_images:
        if cfg.validation_images >= len(items):
            raise ValueError(f"validation_images: {cfg.validation_images} of {len(items)} images would leave none "
                             f"to train on")
        ordered = sorted(items, key=lambda item: str(item.path))
        held = ordered[-cfg.validation_images:]
        items = [item for item in items if item not in held]
    for sheet in write_mask_previews(items, run_dir_for(cfg), cfg.alpha_weight):
        reporter.message(f"loss weights (red = not trained on): {sheet}")
    common = dict(resolution=resolution, buckets=cfg.buckets, encode_moments=host.encode_moments,
                  alpha_as_weight=cfg.alpha_weight, device=host.device, mask_range=mask_range(cfg.mask_weights))
    augment = dict(random_crop=cfg.random_crop, color_jitter=cfg.color_jitter, augment_variants=cfg.augment_variants,
                   resolutions=size_list(cfg.resolutions))
    with host.on_device("vae"):
        dataset = LatentDataset(items, cache_mode=cfg.latent_sampling, batch_size=cfg.batch_size, seed=cfg.seed,
                                flip=cfg.flip, **augment, **common)
        validation = LatentDataset(held, cache_mode="deterministic", batch_size=1, seed=cfg.seed, **common) if held else None
    for path, reason in getattr(dataset, "skipped", []):
        reporter.message(f"skipped {path}: {reason}")
    if validation is not None:
        reporter.message(f"validation loss on {len(held)} held-out image(s) every {cfg.validation_every} steps")
    if cfg.offload_vae:
        host.park("vae")
    return dataset, validation
