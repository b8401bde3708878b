"""The latent dataset every trainer draws from: images VAE-encoded once, cached on CPU, served in bucket batches.

As in the WebUI's ``PersonalizedBase``, each image (not each repeat) is encoded once at construction. The cache
holds, per ``cache_mode``:

- ``once``: one sample ``mean + std * noise``, drawn at cache time from ``seed``;
- ``deterministic``: the mean only;
- ``random``: mean and std, and a fresh sample is drawn every time the image is used.

With ``flip`` the mirrored image is encoded too and each use picks one of the two at random. The order of batches
is a pure function of ``(seed, epoch, position)``, so ``state_dict()`` is all it takes to resume exactly.
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


@dataclass
class Batch:
    latents: torch.Tensor  # [B, C, h, w]
    captions: list[str]  # raw captions; templates and tag processing are the trainer's choice
    weights: torch.Tensor | None  # [B, 1, h, w], mean 1 per image; None when no image in the batch has one
    paths: list[Path]

    def to(self, device, dtype: torch.dtype | None = None) -> "Batch":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)
        return Batch(move(self.latents), self.captions, move(self.weights), self.paths)


@dataclass
class _Entry:
    item: ImageItem
    bucket: tuple[int, int]
    latents: torch.Tensor  # [V, C, h, w]: the sample (once), or the mean (deterministic, random); V = 2 with flip
    std: torch.Tensor | None  # [V, C, h, w] in random mode
    weight: torch.Tensor | None  # [V, 1, h, w]


def bucket_range(resolution: int, step: int = 64) -> tuple[int, int]:
    """kohya's default bucket side limits for a base resolution: half and twice it (256..1024 for 512)."""
    return max(step, resolution // 2 // step * step), max(step, resolution * 2 // step * step)


class LatentDataset:
    def __init__(self, items: Sequence[ImageItem] | ScanResult, *, resolution: int, buckets: bool,
                 encode_moments: EncodeMoments, cache_mode: str = "once", batch_size: int = 1, seed: int = 0,
                 flip: bool = False, alpha_as_weight: bool = False, device=None, encode_batch_size: int = 4,
                 report: Callable[[dict], None] | None = None, mask_range: tuple[float, float] = (0.0, 1.0)):
        if cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be one of {', '.join(CACHE_MODES)}, got {cache_mode!r}")
        if resolution < 8 or resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be >= 1, got {encode_batch_size}")
        self.skipped: list[tuple[Path, str]] = []
        if isinstance(items, ScanResult):
            self.skipped.extend(items.skipped)
            items = items.items
        self.resolution, self.cache_mode, self.batch_size, self.seed = resolution, cache_mode, batch_size, seed
        self.flip, self.alpha_as_weight, self.mask_range = flip, alpha_as_weight, mask_range
        self.bucket_sizes = make_buckets(resolution, *bucket_range(resolution)) if buckets else [(resolution,) * 2]

        self.entries = self._encode_all(list(items), encode_moments, device, encode_batch_size, report)
        if not self.entries:
            listing = "".join(f"\n  {path}: {reason}" for path, reason in self.skipped) or " (no images were given)"
            raise ValueError(f"the dataset has no usable image; skipped:{listing}")
        self.items = [e.item for e in self.entries]
        self.epoch, self.position = 0, 0
        self._plan: tuple[int, list[list[int]]] | None = None

    # -- caching ---------------------------------------------------------------------------------------------

    def _encode_all(self, items, encode_moments, device, chunk, report) -> list[_Entry]:
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[assign_bucket(item.size, self.bucket_sizes)].append(index)
        generator = torch.Generator().manual_seed(self.seed)
        entries: dict[int, _Entry] = {}
        done = 0
        for bucket in sorted(groups):
            indices = groups[bucket]
            for start in range(0, len(indices), chunk):
                part = [(i, items[i]) for i in indices[start:start + chunk]]
                entries.update(self._encode_chunk(part, bucket, encode_moments, device, generator))
                done += len(part)
                if report is not None:
                    report({"cached": done, "total": len(items)})
        return [entries[i] for i in sorted(entries)]

    def _encode_chunk(self, part, bucket, encode_moments, device, generator) -> dict[int, _Entry]:
        loaded = []
        for index, item in part:
            try:
                pixels, weight = self._load(item, bucket)
            except Exception as e:  # noqa: BLE001 - a file that changed or broke since the scan
                self.skipped.append((item.path, f"could not be loaded ({type(e).__name__}: {e})"))
                continue
            loaded.append((index, item, pixels, weight))
        if not loaded:
            return {}
        pixels = torch.stack([p for _, _, p, _ in loaded])
        if self.flip:
            pixels = torch.cat([pixels, pixels.flip(-1)])
        with torch.no_grad():
            mean, std = encode_moments(pixels if device is None else pixels.to(device))
        if mean.shape[0] != pixels.shape[0]:
            raise ValueError(f"encode_moments returned {mean.shape[0]} latents for {pixels.shape[0]} images")
        mean = mean.detach().to("cpu", torch.float32).clone()
        std = std.detach().to("cpu", torch.float32).expand_as(mean).clone()
        if self.cache_mode == "once":
            mean = mean + std * torch.randn(mean.shape, generator=generator)
        # [V * n, ...] -> [n, V, ...]: row k holds image k and, with flip, its mirror
        variants, n = (2 if self.flip else 1), len(loaded)
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

    def _load(self, item: ImageItem, bucket: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray | None]:
        """Pixels [3, H, W] in [-1, 1] at the bucket size, and the weight in [0, 1] at the same size (or None)."""
        image, weight = load_image(item.path, self.alpha_as_weight)
        if item.mask_path is not None:
            weight = load_mask(item.mask_path, image.size)
        scaled, box = cover_crop(image.size, bucket)
        image = image.resize(scaled, Image.BICUBIC).crop(box)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if weight is not None:
            lo, hi = self.mask_range
            weight = lo + (hi - lo) * to_array(weight.resize(scaled, Image.BILINEAR).crop(box))
        return pixels, weight

    def _weight_variants(self, weight: np.ndarray, latent_size) -> torch.Tensor | None:
        """The weight area-averaged to latent size, scaled to mean 1, as [V, 1, h, w]; None if it is all zero."""
        full = torch.from_numpy(weight)[None, None]
        if self.flip:
            full = torch.cat([full, full.flip(-1)])
        small = F.interpolate(full, size=latent_size, mode="area")
        mean = small[0].mean()
        return None if mean <= 0 else small / mean

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
            v = rng.randrange(2) if self.flip else 0
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
        return Batch(torch.stack(latents), [self.entries[i].item.caption for i in ids], stacked_weights,
                     [self.entries[i].item.path for i in ids])

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
