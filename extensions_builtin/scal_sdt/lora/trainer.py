"""LoRA training: LyCORIS adapters (LoRA, LoCon, LoHa, LoKr, DoRA) on the host's UNet — and optionally its text
encoders — learn a concept while the model's weights stay frozen and untouched. The data, prompts, prior
preservation, pivotal embedding and the loss are DreamBooth's (:class:`LoraJob` is a :class:`DreamBoothJob` whose
weights are the adapters'); the result is a kohya-format .safetensors with kohya's ``ss_*`` metadata."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..dreambooth.trainer import DreamBoothJob, pivotal_vectors, prepare_concepts, refuse_existing
from ..host.base import Host
from ..training.loop import LoopResult, run_on_host
from ..training.report import ConsoleReporter, Reporter
from ..training.run_setup import run_dir_for
from .adapters import AdapterSet, make_adapter
from .config import LoraConfig, parse_list
from .targets import per_block, text_targets, unet_blocks, unet_targets


@dataclass
class LoraJob(DreamBoothJob):
    """DreamBooth's job (its concepts, prompts, text cache, pivotal embedding, loss and data state) training
    ``adapters`` instead of the model: the loss is :meth:`DreamBoothJob.loss` unchanged."""

    adapters: AdapterSet | None = None
    block_lr: dict[str, float] = field(default_factory=dict)  # adapter key -> its block's lr weight
    started: float = field(default_factory=time.time)

    def param_groups(self) -> list[dict]:
        weights: dict[float, list] = {}
        for key, a in zip(self.adapters.keys, self.adapters.adapters):
            if key.startswith("lora_unet_"):
                weights.setdefault(self.block_lr.get(key, 1.0), []).extend(a.parameters())
        groups = [{"params": ps, "lr_scale": w} for w, ps in sorted(weights.items())]
        return groups + self.text_and_pivotal_groups()

    def _eval(self, fn):
        """``fn()`` with dropout off (previews, validation); training mode again afterwards."""
        self.adapters.eval()
        try:
            return fn()
        finally:
            self.adapters.train()

    def preview(self, step: int):
        return self._eval(lambda: super(LoraJob, self).preview(step))

    def tensors(self, step: int) -> dict[str, torch.Tensor]:
        """The file's tensors: the adapters' and, with pivotal tuning, the embedding as ``bundle_emb.NAME.…`` (how
        the WebUI finds an embedding inside a LoRA file)."""
        out = self.adapters.file_tensors()
        if self.vectors:
            emb = self.embedding(step)
            out.update({f"bundle_emb.{self.name}." + ("string_to_param.*" if k == "*" else k): v.contiguous()
                        for k, v in emb.vectors.items()})
        return out

    def metadata(self, step: int) -> dict[str, str]:
        from .metadata import lora_metadata

        resolution = self.cfg.resolution or self.host.native_resolution
        datasets = {c.concept.instance_data: [i.caption for i in c.instances.items] for c in self.concepts}
        n_reg = sum(len(c.classes.items) for c in self.concepts if c.classes is not None)
        return lora_metadata(self.cfg, family=self.host.family.name, model_name=self.host.model_name,
                             model_hash=self.host.model_hash, steps=step, datasets=datasets, n_reg=n_reg,
                             started=self.started, resolution=resolution)

    def save(self, step: int, final: bool) -> Path:
        from ..files import save_safetensors
        from ..textual_inversion.format import save_embedding

        path = (Path(self.cfg.out) / f"{self.name}.safetensors" if final
                else self.run_dir / "lora" / f"{self.name}-{step}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.tensors(step), path, metadata=self.metadata(step))
        if self.vectors and final:
            save_embedding(self.embedding(step), Path(self.cfg.embeddings_out) / f"{self.name}.safetensors")
        return path


def build_adapters(cfg: LoraConfig, host: Host) -> tuple[AdapterSet, dict[str, float], nn.ModuleList | None]:
    """The run's adapters (seeded by ``cfg.seed``), each UNet adapter's block lr weight, and the text encoders'
    adapters (None without train_text_encoder)."""
    unet_modules = host.unet_modules()
    targets = unet_targets(unet_modules, cfg.convs)
    blocks = unet_blocks(unet_modules)
    dims = per_block(parse_list(cfg.block_dims, "block_dims", int), blocks, "block_dims", cfg.rank)
    lrs = per_block(parse_list(cfg.block_lrs, "block_lrs"), blocks, "block_lrs", 1.0)
    conv_alpha = cfg.conv_alpha or cfg.alpha
    chosen: dict[str, tuple[nn.Module, int, float]] = {}
    block_lr = {}
    for key, (module, block, conv) in targets.items():
        rank = (cfg.conv_rank or dims[block]) if conv else dims[block]
        if rank <= 0 or lrs[block] <= 0:
            continue
        chosen[key] = (module, rank, conv_alpha if conv else cfg.alpha)
        block_lr[key] = float(lrs[block])
    text = {}
    if cfg.train_text_encoder:
        text = text_targets(host.lora_targets())
        if not text:
            raise ValueError(f"train_text_encoder: {type(host).__name__} names no text-encoder layers for a LoRA")
        for key, module in text.items():
            chosen[key] = (module, cfg.rank, cfg.alpha)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adapters = {key: make_adapter(cfg.network, key, module, rank, alpha, rank_dropout=cfg.rank_dropout,
                                      module_dropout=cfg.module_dropout, init=cfg.network_init,
                                      factor=cfg.lokr_factor)
                    for key, (module, rank, alpha) in chosen.items()}
    net = AdapterSet(adapters, kind=cfg.network).to(host.device, torch.float32)
    te = nn.ModuleList(a for k, a in zip(net.keys, net.adapters) if k in text) if text else None
    return net, block_lr, te


def train_lora(cfg: LoraConfig, host: Host, reporter: Reporter | None = None) -> LoopResult:
    """Train ``cfg.network`` adapters on ``host``'s model; its weights are never written (each adapter wraps its
    layer's forward while attached and is detached however the run ends)."""
    reporter = reporter or ConsoleReporter()
    refuse_existing(cfg, "LoRA")
    net, block_lr, te = build_adapters(cfg, host)  # bad ranks and block lists fail before any data work
    run_dir = run_dir_for(cfg)
    resolution = cfg.resolution or host.native_resolution
    concepts = prepare_concepts(cfg, host, reporter, resolution)
    job = LoraJob(cfg, host, concepts, run_dir, [te] if te is not None else [], vectors=pivotal_vectors(cfg, host),
                  adapters=net, block_lr=block_lr)
    net.attach(1.0).train()
    try:
        job.start(reporter, f"LoRA {cfg.name!r} ({cfg.network}, rank {cfg.rank}, alpha {cfg.alpha:g})",
                  f"{len(net)} adapters on the UNet" + (" and text encoders" if te is not None else ""), resolution)
        # rank and module dropout draw from torch's generator: seeded here (and restored on resume), the caller's
        # own generator state is left as it was
        devices = [host.device] if host.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            return run_on_host(cfg, job, run_dir, reporter, host)
    finally:
        net.detach()

