"""The latent dataset every trainer draws from: images VAE-encoded once, cached on CPU, served in bucket batches.

As in the WebUI's ``PersonalizedBase``, each image (not each repeat) is encoded once at construction. The cache
holds, per ``cache_mode``:

- ``once``: one sample ``mean + std * noise``, drawn at cache time from ``seed``;
- ``deterministic``: the mean only;
- ``random``: mean and std, and a fresh sample is drawn every time the image is used.

With ``flip`` the mirrored image is encoded too and each use picks one of the two at random. With ``random_crop``
(the crop box placed at random along the side that overhangs the bucket, as kohya's) or ``color_jitter``
(brightness, contrast and saturation each scaled by a factor drawn from [1 − s, 1 + s]), ``augment_variants``
differently augmented copies of each image are encoded (times two with flip), and each use picks one: the
augmentations a run sees stay cached latents. With several ``resolutions`` every image is cached at each (its
bucket by aspect for each); batches never mix sizes. The order of batches is a pure function of
``(seed, epoch, position)``, so ``state_dict()`` is all it takes to resume exactly.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .buckets import assign_bucket, cover_crop, make_buckets
from .images import ImageItem, ScanResult, load_image, load_mask, to_array

CACHE_MODES = ("once", "deterministic", "random")
EncodeMoments = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
#: pixels per VAE call while caching: the encoder's activations grow with them (tiny SD1 on the CPU: ~50 MB for one
#: 256 px picture, ~135 MB for four; 3 MB for one 64 px picture, 14 MB for four), and a trainer's peak must not be
#: set by its caching — the WebUI's own trainers encode one picture at a time, and so does this at every size.
ENCODE_PIXELS = 64 * 64


def encode_in_slices(pixels: torch.Tensor, encode_moments: EncodeMoments, device=None,
                     budget: int = ENCODE_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_moments`` of ``pixels`` [N, 3, H, W], at most ``budget`` pixels (at least one picture) per call."""
    rows = max(1, budget // (pixels.shape[-2] * pixels.shape[-1]))
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], rows):
            part = pixels[start:start + rows]
            mean, std = encode_moments(part if device is None else part.to(device))
            means.append(mean)
            stds.append(std.expand_as(mean))
    return (means[0], stds[0]) if len(means) == 1 else (torch.cat(means), torch.cat(stds))


@dataclass
class Batch:
    latents: torch.Tensor  # [B, C, h, w]
    captions: list[str]  # raw captions; templates and tag processing are the trainer's choice
    weights: torch.Tensor | None  # [B, 1, h, w], mean 1 per image; None when no image in the batch has one
    paths: list[Path]
    image_weights: torch.Tensor | None = None  # [B] folder / concept loss weights; None when all are 1

    def to(self, device, dtype: torch.dtype | None = None) -> "Batch":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)
        return Batch(move(self.latents), self.captions, move(self.weights), self.paths, move(self.image_weights))


@dataclass
class _Entry:
    item: ImageItem
    bucket: tuple[int, int]
    latents: torch.Tensor  # [V, C, h, w]: the sample (once), or the mean (deterministic, random); V = 2 with flip
    std: torch.Tensor | None  # [V, C, h, w] in random mode
    weight: torch.Tensor | None  # [V, 1, h, w]


def jitter_colours(image: Image.Image, strength: float, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor drawn from [1 − strength, 1 + strength]."""
    from PIL import ImageEnhance

    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(max(0.0, 1 + rng.uniform(-strength, strength)))
    return image


def bucket_range(resolution: int, step: int = 64) -> tuple[int, int]:
    """kohya's default bucket side limits for a base resolution: half and twice it (256..1024 for 512)."""
    return max(step, resolution // 2 // step * step), max(step, resolution * 2 // step * step)


class LatentDataset:
    def __init__(self, items: Sequence[ImageItem] | ScanResult, *, resolution: int, buckets: bool,
                 encode_moments: EncodeMoments, cache_mode: str = "once", batch_size: int = 1, seed: int = 0,
                 flip: bool = False, alpha_as_weight: bool = False, device=None, encode_batch_size: int = 4,
                 report: Callable[[dict], None] | None = None, mask_range: tuple[float, float] = (0.0, 1.0),
                 random_crop: bool = False, color_jitter: float = 0.0, augment_variants: int = 4,
                 resolutions: Sequence[int] = ()):
        if cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be one of {', '.join(CACHE_MODES)}, got {cache_mode!r}")
        if resolution < 8 or resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be >= 1, got {encode_batch_size}")
        sizes = list(dict.fromkeys([resolution, *resolutions]))
        for r in sizes:
            if r < 8 or r % 8:
                raise ValueError(f"resolutions must be positive multiples of 8, got {r}")
        self.skipped: list[tuple[Path, str]] = []
        if isinstance(items, ScanResult):
            self.skipped.extend(items.skipped)
            items = items.items
        self.resolution, self.cache_mode, self.batch_size, self.seed = resolution, cache_mode, batch_size, seed
        self.flip, self.alpha_as_weight, self.mask_range = flip, alpha_as_weight, mask_range
        self.random_crop, self.color_jitter = random_crop, color_jitter
        self.augments = max(1, augment_variants) if (random_crop or color_jitter) else 1
        self.bucket_sets = [make_buckets(r, *bucket_range(r)) if buckets else [(r, r)] for r in sizes]
        self.bucket_sizes = sorted({b for bs in self.bucket_sets for b in bs})

        self.entries = self._encode_all(list(items), encode_moments, device, encode_batch_size, report)
        if not self.entries:
            listing = "".join(f"\n  {path}: {reason}" for path, reason in self.skipped) or " (no images were given)"
            raise ValueError(f"the dataset has no usable image; skipped:{listing}")
        self.items = list(dict.fromkeys(e.item for e in self.entries))
        self.epoch, self.position = 0, 0
        self._plan: tuple[int, list[list[int]]] | None = None

    # -- caching ---------------------------------------------------------------------------------------------

    def _encode_all(self, items, encode_moments, device, chunk, report) -> list[_Entry]:
        groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for size, bucket_set in enumerate(self.bucket_sets):
            for index, item in enumerate(items):
                groups[assign_bucket(item.size, bucket_set)].append((size, index))
        generator = torch.Generator().manual_seed(self.seed)
        entries: dict[tuple[int, int], _Entry] = {}
        done, total = 0, len(items) * len(self.bucket_sets)
        for bucket in sorted(groups):
            keys = groups[bucket]
            for start in range(0, len(keys), chunk):
                part = [(key, items[key[1]]) for key in keys[start:start + chunk]]
                entries.update(self._encode_chunk(part, bucket, encode_moments, device, generator))
                done += len(part)
                if report is not None:
                    report({"cached": done, "total": total})
        return [entries[k] for k in sorted(entries)]

    def _encode_chunk(self, part, bucket, encode_moments, device, generator) -> dict[int, _Entry]:
        loaded = []
        for index, item in part:
            try:
                variants = [self._load(item, bucket, self._augment_rng(index, bucket, a)) for a in range(self.augments)]
            except Exception as e:  # noqa: BLE001 - a file that changed or broke since the scan
                self.skipped.append((item.path, f"could not be loaded ({type(e).__name__}: {e})"))
                continue
            pixels = [p for p, _ in variants]
            weight = None if variants[0][1] is None else [w for _, w in variants]
            loaded.append((index, item, pixels, weight))
        if not loaded:
            return {}
        # [A * n, ...], augment-major: row a * n + k is image k's augmented copy a
        pixels = torch.stack([p[a] for a in range(self.augments) for _, _, p, _ in loaded])
        if self.flip:
            pixels = torch.cat([pixels, pixels.flip(-1)])
        mean, std = encode_in_slices(pixels, encode_moments, device)
        if mean.shape[0] != pixels.shape[0]:
            raise ValueError(f"encode_moments returned {mean.shape[0]} latents for {pixels.shape[0]} images")
        mean = mean.detach().to("cpu", torch.float32).clone()
        std = std.detach().to("cpu", torch.float32).expand_as(mean).clone()
        if self.cache_mode == "once":
            mean = mean + std * torch.randn(mean.shape, generator=generator)
        # [V * n, ...] -> [n, V, ...]: row k holds image k's copies and, with flip, their mirrors
        variants, n = (2 if self.flip else 1) * self.augments, len(loaded)
        mean = mean.reshape(variants, n, *mean.shape[1:]).transpose(0, 1)
        std = std.reshape(variants, n, *std.shape[1:]).transpose(0, 1)
        latent_size = tuple(mean.shape[-2:])

        out = {}
        for k, (index, item, _, weight) in enumerate(loaded):
            weights = None
            if weight is not None:
                weights = self._weight_variants(weight, latent_size)
                if weights is None:
                    self.skipped.append((item.path, "its loss weight (mask or alpha) is zero everywhere"))
                    continue
            keep_std = std[k].clone() if self.cache_mode == "random" else None
            out[index] = _Entry(item, bucket, mean[k].clone(), keep_std, weights)
        return out

    def _augment_rng(self, index, bucket, copy: int) -> random.Random | None:
        if self.augments == 1 and not self.random_crop:
            return None
        return random.Random(f"{self.seed}:augment:{index}:{bucket}:{copy}")

    def _load(self, item: ImageItem, bucket: tuple[int, int],
              rng: random.Random | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
        """Pixels [3, H, W] in [-1, 1] at the bucket size, and the weight in [0, 1] at the same size (or None);
        with ``rng``, the random crop and colour jitter asked for."""
        image, weight = load_image(item.path, self.alpha_as_weight)
        if item.mask_path is not None:
            weight = load_mask(item.mask_path, image.size)
        scaled, box = cover_crop(image.size, bucket, rng if self.random_crop else None)
        image = image.resize(scaled, Image.BICUBIC).crop(box)
        if self.color_jitter and rng is not None:
            image = jitter_colours(image, self.color_jitter, rng)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if weight is not None:
            lo, hi = self.mask_range
            weight = lo + (hi - lo) * to_array(weight.resize(scaled, Image.BILINEAR).crop(box))
        return pixels, weight

    def _weight_variants(self, weights: list[np.ndarray], latent_size) -> torch.Tensor | None:
        """Each copy's weight area-averaged to latent size, scaled to mean 1, as [V, 1, h, w]; None if one is all
        zero."""
        full = torch.stack([torch.from_numpy(w)[None] for w in weights])
        if self.flip:
            full = torch.cat([full, full.flip(-1)])
        small = F.interpolate(full, size=latent_size, mode="area")
        means = [small[a].mean() for a in range(len(weights))] * (2 if self.flip else 1)
        if any(m <= 0 for m in means):
            return None
        if len(weights) == 1:
            return small / means[0]
        return small / torch.stack(means).view(-1, 1, 1, 1)

    # -- epochs ------------------------------------------------------------------------------------------------

    @property
    def len_epoch(self) -> int:
        """Batches per epoch: each bucket's images × repeats, in batches of at most ``batch_size``."""
        per_bucket: dict[tuple[int, int], int] = defaultdict(int)
        for entry in self.entries:
            per_bucket[entry.bucket] += entry.item.repeats
        return sum(math.ceil(count / self.batch_size) for count in per_bucket.values())

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch as lists of entry indices: each image ``repeats`` times, seeded shuffle,
        grouped by bucket (a bucket's last batch may be short), then the batches shuffled."""
        rng = random.Random(f"{self.seed}:epoch:{epoch}")
        order = [i for i, entry in enumerate(self.entries) for _ in range(entry.item.repeats)]
        rng.shuffle(order)
        by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in order:
            by_bucket[self.entries[i].bucket].append(i)
        batches = [ids[k:k + self.batch_size] for _, ids in sorted(by_bucket.items())
                   for k in range(0, len(ids), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def next_batch(self) -> Batch:
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self.epoch_batches(self.epoch))
        ids = self._plan[1][self.position]
        rng = random.Random(f"{self.seed}:batch:{self.epoch}:{self.position}")
        batch = self._collate(ids, rng)
        self.position += 1
        if self.position == len(self._plan[1]):
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def _collate(self, ids: list[int], rng: random.Random) -> Batch:
        noise = torch.Generator().manual_seed(rng.getrandbits(63))
        latents, weights = [], []
        for i in ids:
            entry = self.entries[i]
            copies = entry.latents.shape[0]
            v = rng.randrange(copies) if copies > 1 else 0
            latent = entry.latents[v]
            if entry.std is not None:
                latent = latent + entry.std[v] * torch.randn(latent.shape, generator=noise)
            latents.append(latent)
            weights.append(None if entry.weight is None else entry.weight[v])
        if all(w is None for w in weights):
            stacked_weights = None
        else:
            ones = torch.ones(1, *latents[0].shape[-2:])
            stacked_weights = torch.stack([ones if w is None else w for w in weights])
        image_weights = [self.entries[i].item.weight for i in ids]
        return Batch(torch.stack(latents), [self.entries[i].item.caption for i in ids], stacked_weights,
                     [self.entries[i].item.path for i in ids],
                     None if all(w == 1.0 for w in image_weights) else torch.tensor(image_weights))

    # -- resume ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"the saved dataset state has seed {state['seed']}, but this dataset was built with "
                             f"seed {self.seed}; build it with the saved seed to resume")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.len_epoch:
            raise ValueError(f"the saved dataset state (epoch {epoch}, position {position}) does not fit a dataset "
                             f"of {self.len_epoch} batches per epoch")
        self.epoch, self.position = epoch, position
