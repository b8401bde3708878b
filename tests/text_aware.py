"""A tiny model that listens to its prompt, made in seconds for learning tests.

A freshly built tiny model ignores the text almost entirely, so nothing learned through the text could show.
Here its UNet is fine-tuned briefly on two captioned concepts (orange stars, blue circles), after which the
right prompt gives a lower loss than the wrong one. Issue 7's pretrained toy world replaces this."""
from __future__ import annotations

from pathlib import Path

import torch

from scal_sdt.demo_data import make_concept_folder
from scal_sdt.host.base import Conditioning
from scal_sdt.host.standalone import load_host
from scal_sdt.training.dataset import LatentDataset
from scal_sdt.training.images import scan_folder

CONCEPTS = {"a": ("star", "orange", "an orange star"), "b": ("circle", "blue", "a blue circle")}


def latents_of(host, folder: Path) -> torch.Tensor:
    ds = LatentDataset(scan_folder(folder).items, resolution=64, buckets=False, encode_moments=host.encode_moments,
                       cache_mode="deterministic")
    return torch.cat([ds.next_batch().latents for _ in range(ds.len_epoch)])


def text_aware_host(family: str, root: Path, steps: int = 300, seed: int = 0):
    torch.manual_seed(seed)
    host = load_host(family, device="cpu")
    data = {k: latents_of(host, make_concept_folder(root / f"base-{k}", shape, colour, 16, seed=seed,
                                                         background="white"))
            for k, (shape, colour, _) in CONCEPTS.items()}
    with torch.no_grad():
        conds = {k: host.encode_prompts([prompt] * 4, size=(64, 64)) for k, (_, _, prompt) in CONCEPTS.items()}
    cond = Conditioning.cat([conds["a"], conds["b"]])
    unet = host.components.unet
    unet.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.cat([data[k][torch.randint(0, len(data[k]), (4,), generator=gen)] for k in ("a", "b")])
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, 1000, (x.shape[0],), generator=gen)
        out = host.predict(host.schedule.add_noise(x, noise, t), t, cond)
        loss = ((out - host.schedule.target(x, noise, t)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.requires_grad_(False)
    return host
