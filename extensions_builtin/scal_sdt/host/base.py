"""The model view every feature sees. Two adapters implement it: the WebUI's loaded model and a checkpoint file."""
from __future__ import annotations

import abc
import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from ..files import read_safetensors_into, write_safetensors
from .families import Family
from .schedule import NoiseSchedule

PARTS = ("text", "unet", "vae")  # what on_device() can be asked for


@dataclass
class Conditioning:
    """What the UNet is conditioned on for one batch."""

    context: torch.Tensor  # [B, 77·windows, width] cross-attention context
    pooled: torch.Tensor | None = None  # SDXL: pooled OpenCLIP-G text embedding [B, P]
    time_ids: torch.Tensor | None = None  # SDXL: (orig h, orig w, crop top, crop left, target h, target w) [B, 6]

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        """Rows of several conditionings in one batch (same number of prompt windows)."""
        def join(xs):
            return None if xs[0] is None else torch.cat(xs)
        return Conditioning(join([p.context for p in parts]), join([p.pooled for p in parts]),
                            join([p.time_ids for p in parts]))

    def split(self, n: int) -> tuple["Conditioning", "Conditioning"]:
        """The first ``n`` rows and the rest."""
        def part(x, sl):
            return None if x is None else x[sl]
        first, rest = slice(0, n), slice(n, None)
        return (Conditioning(part(self.context, first), part(self.pooled, first), part(self.time_ids, first)),
                Conditioning(part(self.context, rest), part(self.pooled, rest), part(self.time_ids, rest)))


@dataclass(frozen=True)
class TextEncoderInfo:
    key: str  # 'clip_l' | 'clip_h' | 'clip_g': the key in embedding files
    width: int


class Host(abc.ABC):
    """Who owns the model: how to encode prompts, call the UNet and VAE, place parts on the device, report."""

    family: Family
    schedule: NoiseSchedule
    device: torch.device
    dtype: torch.dtype  # dtype of the frozen weights
    model_name: str
    #: the model as a run's config names it (``model`` in the saved metadata): the built-in name or path it was
    #: loaded from, the WebUI's checkpoint title
    source: str = ""
    native_resolution: int
    latent_factor: int = 8  # pixels per latent pixel

    @property
    @abc.abstractmethod
    def text_encoders(self) -> list[TextEncoderInfo]: ...

    @property
    def widths(self) -> dict[str, int]:
        return {e.key: e.width for e in self.text_encoders}

    @property
    @abc.abstractmethod
    def model_hash(self) -> str:
        """The short hash the WebUI shows for the checkpoint (first 10 hex digits of its sha256)."""

    @abc.abstractmethod
    def token_vectors(self, text: str) -> dict[str, torch.Tensor]:
        """Raw token-embedding rows of ``text`` (no start/end token) per encoder key: [n_tokens, width]."""

    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str], embeddings: dict[str, dict[str, torch.Tensor]] | None = None,
                       size: tuple[int, int] = (512, 512)) -> Conditioning:
        """Conditioning for ``prompts``; ``embeddings`` maps an embedding name to its vectors per encoder key.

        Gradients flow into those vectors. ``size`` is (height, width) in pixels (SDXL size conditioning).
        """

    @abc.abstractmethod
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet's raw output (ε or v, see ``schedule.prediction_type``)."""

    @abc.abstractmethod
    def encode_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) for pixels in [-1, 1], already multiplied by the latent scale factor."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → pixels in [-1, 1]."""

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Like :meth:`decode`, with gradients flowing back to ``latents`` (APT's reconstruction loss)."""
        return self.decode(latents)

    @contextlib.contextmanager
    def on_device(self, *parts: str) -> Iterator[None]:
        """Have ``parts`` (of ``PARTS``) on the compute device inside the block, the rest where the memory mode wants."""
        yield

    def park(self, part: str) -> None:
        """Move ``part`` off the device until a later ``on_device`` asks for it (a memory saver)."""

    def kv_projections(self) -> list:
        """(to_k, to_v) of every attention layer of the UNet: where hypernetworks apply."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its attention layers")

    def unet_modules(self) -> dict:
        """The UNet's modules by their path in the original (LDM/SGM) layout, ``input_blocks.4.1.…``: where LoRA
        layers attach and how kohya files name them."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its UNet modules")

    def lora_targets(self) -> dict:
        """Every layer a kohya LoRA file may name, by its key (``lora_unet_input_blocks_4_1_…``): the UNet's modules
        in the original layout; a host that knows more names (diffusers', the text encoders') adds them."""
        return {"lora_unet_" + path.replace(".", "_"): m for path, m in self.unet_modules().items()}

    def vae_module(self):
        """The VAE (its size counts in a memory estimate)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its VAE")

    def trainable_modules(self, text: bool = False) -> list:
        """What a fine-tune (DreamBooth) trains: the UNet and, with ``text``, the text encoders."""
        raise NotImplementedError(f"{type(self).__name__} cannot be fine-tuned")

    @contextlib.contextmanager
    def weights_kept(self, text: bool = False, spill_dir=None) -> Iterator[None]:
        """Inside, the UNet (and text encoders) may be trained in place; on leaving they are exactly as loaded
        again (their weights put back bit for bit, in their dtype): the WebUI's model, or the page's, is as it was.

        Weights on an accelerator are kept as a copy in RAM. Weights that already live in RAM (a CPU WebUI) are
        kept in a file under ``spill_dir`` (default: the system's temporary folder) instead, written and read back
        one tensor at a time: a second copy of a full-size UNet in RAM (SD1 3.2 GiB in fp32) is what does not fit
        beside the model and its training."""
        modules = self.trainable_modules(text)
        dtypes = [next(m.parameters()).dtype for m in modules]
        with contextlib.ExitStack() as stack:
            if live_in_ram(modules):
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scal-sdt-kept-", dir=spill_dir)))
                kept = [folder / f"{i}.safetensors" for i in range(len(modules))]
                for m, path in zip(modules, kept):
                    with open(path, "wb") as f:
                        write_safetensors(m.state_dict(), f)
                put_back = lambda m, path: read_safetensors_into(path, m.state_dict())  # noqa: E731
            else:
                kept = [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for m in modules]
                put_back = lambda m, sd: m.load_state_dict(sd)  # noqa: E731
            try:
                yield
            finally:
                with torch.no_grad():
                    for m, dtype, saved in zip(modules, dtypes, kept):
                        m.requires_grad_(False).to(dtype)
                        put_back(m, saved)

    def save_checkpoint(self, path, dtype=None):
        """The model as an original-layout single-file ``.safetensors`` (with the yaml the WebUI needs), written
        atomically; ``dtype`` casts the floating-point tensors. Returns the path."""
        raise NotImplementedError(f"{type(self).__name__} cannot save a checkpoint")

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory in the UNet and text encoders."""

    def begin_training(self) -> None:
        """Before a run (``runs.train``): switch off what would keep gradients from the parts a trainer hooks into."""

    def restore(self) -> None:
        """After a run, finished or not (``runs.train``): put back everything the run changed on the host."""

    @abc.abstractmethod
    def sample(self, prompts: list[str], negative: str = "", steps: int = 20, cfg_scale: float = 7.0, seed: int = 0,
               width: int | None = None, height: int | None = None,
               embeddings: dict[str, dict[str, torch.Tensor]] | None = None) -> list[Image.Image]:
        """Preview images for ``prompts`` with the host's own sampler."""

    def autocast(self, precision: str):
        """Autocast context for a training step at ``precision`` ('fp32', 'fp16', 'bf16')."""
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)


def live_in_ram(modules) -> bool:
    """Whether every weight and buffer of ``modules`` is in RAM (a CPU WebUI), not on an accelerator."""
    return all(t.device.type == "cpu" for m in modules for t in m.state_dict().values())


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] pixels [B, 3, H, W] → PIL images."""
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
