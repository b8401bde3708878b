"""Data-parallel training under ``accelerate launch --multi_gpu`` or ``torchrun``: one process per GPU, each with the
whole model on its own device and its own draws of images, noise and timesteps; after every backward pass the
gradients are averaged across the processes (one all-reduce per bucket), so every process applies the same step
and the weights stay identical. The first process alone writes files, previews and logs.

The launchers set ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them this is one process and every method
here is a no-op. The process group is ours (NCCL on CUDA, gloo on the CPU), so any launcher that sets those
variables works."""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from dataclasses import dataclass

import torch

#: gradients are averaged in buckets of about this many elements (fewer collectives, bounded extra memory)
BUCKET_ELEMENTS = 25_000_000


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, requested: str) -> str:
        """The device of this process: the requested one alone, the process's own GPU when several run."""
        if self.distributed and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        if self.distributed and requested == "auto":
            return "cpu"
        return requested

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Every gradient replaced by its mean over the processes (a trainable parameter without one counts as zero;
        frozen ones, such as text encoders stopped part-way, are left out in every process alike)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = []
        for p in params:
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """For each flag, whether it is set in any process (how all processes agree to skip, save or stop)."""
        if not self.distributed:
            return flags
        import torch.distributed as dist

        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def agree(self, requests: set[str], device: torch.device) -> set[str]:
        """The first process's control requests (save, sample, backup, stop), made every process's."""
        if not self.distributed:
            return requests
        from .control import REQUESTS

        flags = self.any([r in requests for r in REQUESTS], device)
        return {r for r, f in zip(REQUESTS, flags) if f} | {r for r in requests if r.startswith("unknown:")}

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order (each process's resume state)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, params: list[torch.Tensor]) -> None:
        """The first process's values into every process (randomly initialised weights start the same)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def _buckets(grads: list[torch.Tensor]):
    bucket, size = [], 0
    for g in grads:
        if bucket and (size + g.numel() > BUCKET_ELEMENTS or g.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel()
    if bucket:
        yield bucket


_CURRENT: Processes | None = None


def _leave() -> None:
    """At exit: wait for the others, then close the process group (a group left open can abort the interpreter's
    shutdown with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def current() -> Processes:
    """This process's place among the launched ones; the first call joins the process group."""
    global _CURRENT
    if _CURRENT is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            _CURRENT = Processes()
        else:
            import torch.distributed as dist

            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if not dist.is_initialized():
                if torch.cuda.is_available():
                    torch.cuda.set_device(local_rank)
                # long enough for the first process to make class images while the others wait
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=3))
                atexit.register(_leave)
            _CURRENT = Processes(dist.get_rank(), dist.get_world_size(), local_rank)
    return _CURRENT
