"""The WebUI host: the model view over the model the AUTOMATIC1111 WebUI has loaded (``shared.sd_model``).

Prompts go through the WebUI's own hijacked text encoders, so our embedding vectors are spliced in by its
``EmbeddingsWithFixes`` exactly as a saved embedding would be; gradients reach them. Device placement is the
WebUI's: under --medvram / --lowvram its own hooks move each part to the GPU when it runs, and nothing here moves
the model behind their back. Only ``webui/`` (and ``scripts/``) import ``modules.*``.
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from modules import devices, lowvram, processing, prompt_parser, sd_hijack, shared  # noqa: the WebUI
from modules.textual_inversion.textual_inversion import Embedding as WebUIEmbedding

from ..host.attention import kv_projections
from ..host.base import Conditioning, Host, TextEncoderInfo
from ..host.families import SD1, SD2, SDXL
from ..host.schedule import NoiseSchedule
from ..training.report import Reporter


#: the WebUI's attention optimisations whose backward pass keeps no whole attention matrix: kept for our runs
MEMORY_EFFICIENT_ATTENTION = ("xformers", "sdp", "sdp-no-mem", "sub-quadratic")


class WebUIHost(Host):
    def __init__(self, sd_model=None):
        self.sd_model = sd_model or shared.sd_model
        if self.sd_model is None:
            raise RuntimeError("no model is loaded in the WebUI: choose a Stable Diffusion checkpoint first")
        if getattr(self.sd_model, "cond_stage_model", None) is None and hasattr(self.sd_model, "forge_objects"):
            raise RuntimeError("this WebUI (Forge) cannot give gradients through its own model; train on the "
                               "checkpoint file with the standalone adapter instead")
        m = self.sd_model
        if getattr(m, "is_sd3", False):  # A1111 1.10 (and reForge) load SD3, whose text side is not CLIP-shaped
            raise RuntimeError("the loaded model is Stable Diffusion 3: SCAL-SDT trains SD1, SD2 and SDXL models; "
                               "choose one of those in the checkpoint list")
        self.family = SDXL if getattr(m, "is_sdxl", False) else SD2 if is_sd2(m) else SD1
        prediction = "v_prediction" if getattr(m, "parameterization", "eps") == "v" else "epsilon"
        self.schedule = NoiseSchedule(model_alphas_cumprod(m), prediction)
        # reForge: an ldm model whose UNet and VAE are its Forge-style backend's (``forge_objects``); its
        # encode/decode_first_stage run under inference_mode, so the VAE is called here directly
        self._backend = getattr(m, "forge_objects", None)
        self.device = devices.device
        self.dtype = devices.dtype_unet
        info = getattr(m, "sd_checkpoint_info", None)
        self.model_name = getattr(info, "name_for_extra", None) or getattr(info, "model_name", "model")
        self.source = getattr(info, "title", None) or self.model_name  # as the WebUI's checkpoint list names it
        self._hash = getattr(info, "shorthash", None) or (getattr(m, "sd_model_hash", None) or "")[:10]
        self.native_resolution = 1024 if self.family is SDXL else 768 if prediction == "v_prediction" else 512
        self.latent_factor = 8
        self._parked: set[str] = set()
        self._ldm_checkpoint: list[tuple] = []  # (module, flag) switched off while we train
        self._checkpointed: list = []  # blocks whose forward is torch's checkpoint while we train
        self._sdp_attention: list = []  # attention layers given torch's scaled-dot-product attention while we train
        self._frozen: list[tuple[torch.nn.Parameter, bool]] = []  # (weight, its requires_grad) frozen while we train

    # -- identity ---------------------------------------------------------------------------------------------
    def _embedders(self) -> list:
        if self.family is SDXL:
            return [e for e in self.sd_model.conditioner.embedders if hasattr(e, "encode_embedding_init_text")]
        return [self.sd_model.cond_stage_model]

    @property
    def text_encoders(self) -> list[TextEncoderInfo]:
        out = []
        for spec, embedder in zip(self.family.encoders, self._embedders()):
            with torch.no_grad():
                width = embedder.encode_embedding_init_text(",", 1).shape[1]
            out.append(TextEncoderInfo(spec.key, int(width)))
        return out

    @property
    def model_hash(self) -> str:
        return self._hash

    def token_vectors(self, text: str) -> dict[str, torch.Tensor]:
        """As the WebUI's create_embedding: the raw token rows, looked up where the table's weights are."""
        out = {}
        with torch.no_grad():
            for spec, embedder in zip(self.family.encoders, self._embedders()):
                out[spec.key] = embedder.encode_embedding_init_text(text, 75).detach().float().cpu()
        return out

    # -- text -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _registered(self, embeddings: dict[str, dict[str, torch.Tensor]] | None) -> Iterator[None]:
        """Register our vectors in the WebUI's embedding database for the duration of one encode; put back
        whatever was registered under those names before."""
        db = sd_hijack.model_hijack.embedding_db
        previous = {}
        for name, vectors in (embeddings or {}).items():
            previous[name] = db.word_embeddings.get(name)
            vec = vectors if self.family is SDXL else next(iter(vectors.values()))
            first = next(iter(vectors.values()))
            emb = WebUIEmbedding(vec, name)
            emb.vectors, emb.shape = first.shape[0], sum(v.shape[-1] for v in vectors.values())
            db.register_embedding(emb, self.sd_model)
        trainable = []
        if self.family is SDXL:  # sgm runs non-trainable embedders under no_grad; let gradients reach the vectors
            for embedder in self.sd_model.conditioner.embedders:
                if not embedder.is_trainable and embeddings:
                    trainable.append(embedder)
                    embedder.is_trainable = True
        try:
            yield
        finally:
            for embedder in trainable:
                embedder.is_trainable = False
            for name, old in previous.items():
                db.register_embedding_by_name(old, self.sd_model, name)

    def encode_prompts(self, prompts, embeddings=None, size=(512, 512)) -> Conditioning:
        h, w = size
        with self._registered(embeddings):
            batch = prompt_parser.SdConditioning(list(prompts), width=w, height=h)
            c = self.sd_model.get_learned_conditioning(batch)
        if isinstance(c, dict):
            return Conditioning(context=c["crossattn"], pooled=c["vector"])
        return Conditioning(context=c)

    # -- unet / vae -------------------------------------------------------------------------------------------
    def predict(self, x_t, t, cond: Conditioning) -> torch.Tensor:
        if self._backend is not None:
            self._backend_load("unet")
        if self.family is SDXL:
            return self.sd_model.apply_model(x_t, t, {"crossattn": cond.context, "vector": cond.pooled})
        return self.sd_model.apply_model(x_t, t, cond.context)

    def encode_moments(self, pixels):
        m = self.sd_model
        if self._backend is not None:
            return self._backend_moments(pixels)
        pixels = pixels.to(devices.device, devices.dtype_vae)
        if self.family is SDXL:
            if lowvram.is_enabled(m):  # only the WebUI's wrapped encode moves the VAE; it returns a sample
                z = m.encode_first_stage(pixels).float()
                return z, torch.zeros_like(z)
            posterior = type(m.first_stage_model).__mro__[1].encode(m.first_stage_model, pixels)
        else:
            posterior = m.encode_first_stage(pixels)
        scale = float(m.scale_factor)
        return (posterior.mean * scale).float(), (posterior.std * scale).float()

    def _backend_moments(self, pixels):
        """reForge's VAE (ldm_patched's, the ldm layout): mean and std of its diagonal Gaussian, as ldm's posterior
        gives them, from its encoder and quant_conv; its own encode only returns a sample, under inference_mode."""
        vae = self.sd_model.first_stage_model
        self._backend_load("vae")
        weight = next(vae.parameters())
        with torch.no_grad():
            moments = vae.encoder(pixels.to(weight.device, weight.dtype))
            if getattr(vae, "quant_conv", None) is not None:
                moments = vae.quant_conv(moments)
        mean, logvar = moments.float().chunk(2, dim=1)
        scale = float(self.sd_model.scale_factor)
        return mean * scale, torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * scale

    def _backend_load(self, part: str) -> None:
        """reForge keeps its UNet and VAE where its memory manager put them: ask it for the part (a GPU run)."""
        patcher = getattr(self._backend, "unet", None) if part == "unet" else getattr(
            getattr(self._backend, "vae", None), "patcher", None)
        if patcher is None or devices.device.type == "cpu":
            return
        from ldm_patched.modules import model_management  # noqa: the WebUI (reForge's backend)

        model_management.load_model_gpu(patcher)

    def decode(self, latents):
        # clone: reForge decodes under inference_mode, and its tensors cannot enter autograd afterwards
        return self.sd_model.decode_first_stage(latents.to(devices.device, devices.dtype_vae)).float().clone()

    def decode_differentiable(self, latents):
        """The WebUI's decode_first_stage runs under no_grad; its VAE's own decode keeps the graph."""
        vae = self.sd_model.first_stage_model
        if self._backend is not None:
            self._backend_load("vae")
            weight = next(vae.parameters())
            return vae.decode(latents.to(weight.device, weight.dtype) / self.sd_model.scale_factor).float()
        return vae.decode(latents.to(devices.device, devices.dtype_vae) / self.sd_model.scale_factor).float()

    def on_device(self, *parts):
        if "vae" in parts and "vae" in self._parked:
            self.sd_model.first_stage_model.to(devices.device)
            self._parked.discard("vae")
        return contextlib.nullcontext()

    def park(self, part: str) -> None:
        """The VAE leaves the GPU once latents are cached (not under --medvram/--lowvram, whose hooks own it)."""
        if part == "vae" and not lowvram.is_enabled(self.sd_model) and devices.device.type != "cpu":
            self.sd_model.first_stage_model.to(devices.cpu)
            self._parked.add("vae")

    # -- fine-tuning ------------------------------------------------------------------------------------------
    def _text_modules(self) -> list:
        out = []
        for embedder in self._embedders():
            wrapped = embedder.wrapped
            out.append(wrapped.transformer if hasattr(wrapped, "transformer") else wrapped.model)
        return out

    def vae_module(self):
        return self.sd_model.first_stage_model

    def trainable_modules(self, text: bool = False) -> list:
        return [self.sd_model.model.diffusion_model] + (self._text_modules() if text else [])

    def save_checkpoint(self, path, dtype=None):
        """The WebUI's model in its file's layout (the hijack's ``wrapped`` levels taken out of the keys), with the
        source's yaml beside it when it had one."""
        import shutil
        from pathlib import Path

        from ..files import save_safetensors

        path = Path(path)
        info = getattr(self.sd_model, "sd_checkpoint_info", None)
        source = Path(info.filename) if info is not None else None
        keep = None  # the source file's keys, when its header says them (buffers it lacked are not added)
        if source is not None and source.suffix == ".safetensors" and source.is_file():
            from safetensors import safe_open

            with safe_open(str(source), framework="pt") as f:
                keep = set(f.keys())
        sd = {}
        for k, v in self.sd_model.state_dict().items():
            k = k.replace(".wrapped.", ".")
            if keep is not None and k not in keep:
                continue
            if k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")):
                sd[k] = v  # moved and cast one at a time as it is written: the model is never held twice
        save_safetensors(sd, path, metadata={"format": "pt"}, dtype=dtype)
        source_yaml = source.with_suffix(".yaml") if source is not None else None
        if source_yaml is not None and source_yaml.is_file():
            shutil.copyfile(source_yaml, path.with_suffix(".yaml"))
        return path

    # -- training ---------------------------------------------------------------------------------------------
    def begin_training(self) -> None:
        """ldm's own gradient checkpointing (``use_checkpoint`` in the model's yaml, on in SD1's) backpropagates into
        each block's own weights only: a LoRA or hypernetwork hooked into a block would never get a gradient. It is
        switched off while we train; :meth:`set_gradient_checkpointing` puts torch's (which has no such limit) in.
        Every weight of the model is frozen for the run (the WebUI leaves the UNet's at ``requires_grad=True``, so
        each step would compute and keep ``.grad`` for all of it); what a run trains (DreamBooth's UNet) it unfreezes
        itself, and :meth:`restore` puts the WebUI's flags back. The UNet's attention becomes memory-efficient for the
        run where the WebUI's is not (:meth:`_use_sdp_attention`)."""
        for p in self.sd_model.parameters():
            self._frozen.append((p, p.requires_grad))
            p.requires_grad_(False)
        for m in self.sd_model.model.diffusion_model.modules():
            for flag in ("checkpoint", "use_checkpoint"):
                if getattr(m, flag, None) is True:
                    setattr(m, flag, False)
                    self._ldm_checkpoint.append((m, flag))
        self._use_sdp_attention()

    def _use_sdp_attention(self) -> None:
        """Torch's scaled-dot-product attention (the WebUI's own "sdp" forward, hypernetworks applied as in every
        other) on each attention layer of the UNet for the run, where the attention the WebUI chose keeps each
        layer's whole attention matrix for the backward pass: InvokeAI's (its choice on a CPU), Doggettx's (on a
        GPU), V1 or none. Its memory-efficient kernels keep O(tokens) per layer instead of O(tokens²): tiny SD1 at
        256 px kept 21 MB of activations a step instead of 131 MB, and ran twice as fast on a CPU. Per instance (the
        WebUI's classes are not touched); :meth:`restore` takes it off. reForge's own backend is left as it is."""
        import functools

        try:
            from modules import sd_hijack_optimizations  # noqa: the WebUI
        except ImportError:
            return
        forward = getattr(sd_hijack_optimizations, "scaled_dot_product_attention_forward", None)
        chosen = getattr(sd_hijack.model_hijack, "optimization_method", None) or ""
        if (forward is None or self._backend is not None or chosen in MEMORY_EFFICIENT_ATTENTION
                or not hasattr(torch.nn.functional, "scaled_dot_product_attention")):
            return
        for m in self.sd_model.model.diffusion_model.modules():
            if type(m).__name__ == "CrossAttention" and hasattr(m, "to_k") and "forward" not in vars(m):
                m.forward = functools.partial(forward, m)
                self._sdp_attention.append(m)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Each transformer and residual block of the UNet recomputed in the backward pass (torch's non-reentrant
        checkpoint, per instance: the WebUI's classes are not touched). ldm's blocks are checkpointed at their
        ``_forward`` (their ``forward`` is ldm's own checkpoint wrapper, switched off while we train); reForge's
        transformer blocks have no ``_forward``, so there the class's ``forward`` is (without them a TI step on its
        bf16 SDXL UNet on a CPU kept an fp32 cast of every weight it passed through for the backward pass)."""
        from torch.utils.checkpoint import checkpoint

        for m in self._checkpointed:
            del m.forward
        self._checkpointed = []
        if not enabled:
            return
        for m in self.sd_model.model.diffusion_model.modules():
            if type(m).__name__ in ("BasicTransformerBlock", "ResBlock"):
                block = getattr(m, "_forward", None) or type(m).forward.__get__(m)
                m.forward = lambda *args, _f=block, **kw: checkpoint(_f, *args, use_reentrant=False, **kw)
                self._checkpointed.append(m)

    def unet_weight_bytes(self) -> int:
        """The bytes of the UNet's weights: what the WebUI's own trainers hold again as gradients (its UNet's weights
        are left at ``requires_grad=True``, so every step of its TI or hypernetwork training computes and keeps a
        ``.grad`` for each)."""
        return sum(p.numel() * p.element_size() for p in self.sd_model.model.diffusion_model.parameters())

    def step_activation_bytes(self, batch: int, size: tuple[int, int], precision: str = "fp32") -> int:
        """About how many bytes of activations one training step keeps for its backward pass without gradient
        checkpointing, at ``batch`` pictures of ``size`` pixels: the UNet runs (as our runs run it: weights frozen,
        the attention of :meth:`_use_sdp_attention`) on 8x8 and 8x16 latents with a gradient wanted for its input
        (so every layer keeps what the backward pass needs, as for a hypernetwork in the first block), and autograd's
        saved tensors are counted (the weights themselves not). With memory-efficient attention what a layer keeps
        grows with its positions, so the two counts give a line, read at ``size`` and times ``batch``. Called outside
        a run; a fraction of a second on a CPU for a small model (tiny SD1: 2.7 MB kept at most). Nothing is kept
        while counting: each storage is counted once while it lives (where a host casts weights per layer, as reForge
        does for a bf16 or fp8 UNet, keeping the saved tensors would hold a cast of the whole UNet for the count)."""
        from torch.multiprocessing.reductions import StorageWeakRef

        in_channels = self.sd_model.model.diffusion_model.in_channels
        weights = {p.untyped_storage().data_ptr() for p in self.sd_model.parameters()}

        def kept(h: int, w: int) -> int:
            seen: dict[int, tuple[StorageWeakRef, int]] = {}  # address -> (the storage there, its bytes counted)
            total = 0

            def pack(t):
                nonlocal total
                storage = t.untyped_storage()
                address, nbytes = storage.data_ptr(), storage.nbytes()
                if address in weights:
                    return None
                counted = seen.get(address)
                if counted is None or counted[0].expired():  # a new storage (perhaps at a freed one's address)
                    total += nbytes
                    seen[address] = (StorageWeakRef(storage), nbytes)
                elif nbytes > counted[1]:
                    total += nbytes - counted[1]
                    seen[address] = (counted[0], nbytes)
                return None  # the forward pass keeps nothing for a backward pass that never comes

            with torch.no_grad():
                cond = self.encode_prompts([""], size=(h * self.latent_factor, w * self.latent_factor))
            x = torch.zeros(1, in_channels, h, w, device=self.device, requires_grad=True)  # as a batch's
            t = torch.full((1,), 500, device=self.device, dtype=torch.long)
            with (torch.enable_grad(), self.autocast(precision), self.on_device("unet"),
                  torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)):
                self.predict(x, t, cond)
            return total

        self.begin_training()
        try:
            small, large = kept(8, 8), kept(8, 16)
        finally:
            self.restore()
        per_position = max(large - small, 0) / (8 * 16 - 8 * 8)
        positions = (size[0] // self.latent_factor) * (size[1] // self.latent_factor)
        return int(batch * (small + per_position * (positions - 8 * 8)))

    def restore(self) -> None:
        """Put everything back where the WebUI keeps it."""
        self.on_device("vae")
        self.set_gradient_checkpointing(False)
        for m in self._sdp_attention:
            del m.forward
        self._sdp_attention = []
        for m, flag in self._ldm_checkpoint:
            setattr(m, flag, True)
        self._ldm_checkpoint = []
        for p, flag in self._frozen:  # as the WebUI had them, with no gradient of ours left behind
            p.grad = None
            p.requires_grad_(flag)
        self._frozen = []

    def autocast(self, precision: str):
        """The WebUI's own autocast (fp16, or none when it runs in full precision); bf16 asked for — DreamBooth's
        bf16 weights need bf16 maths — is torch's bf16 autocast on the WebUI's device."""
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return devices.autocast(disable=precision == "fp32")

    def unet_modules(self) -> dict:
        return dict(self.sd_model.model.diffusion_model.named_modules())

    def kv_projections(self) -> list:
        return kv_projections(self.sd_model.model.diffusion_model)

    # -- previews ---------------------------------------------------------------------------------------------
    def aesthetic_sampling(self, path, settings) -> dict:
        """The :meth:`sample` arguments that apply an aesthetic embedding the WebUI's way (as txt2img's accordion)."""
        from .aesthetic import apply_to

        return {"prepare": lambda p: apply_to(p, Path(path), settings)}

    def sample(self, prompts, negative="", steps=20, cfg_scale=7.0, seed=0, width=None, height=None,
               embeddings=None, prepare=None) -> list[Image.Image]:
        """The WebUI's own txt2img pipeline, so previews look like what the user will get; RNG state is kept.
        ``prepare(p)`` may change the processing object first (an aesthetic embedding's conditioning)."""
        width = width or self.native_resolution
        height = height or self.native_resolution
        rng = (torch.get_rng_state(), random.getstate())
        self.on_device("vae")
        try:
            with self._registered(embeddings):
                p = processing.StableDiffusionProcessingTxt2Img(
                    sd_model=self.sd_model, prompt=list(prompts), negative_prompt=negative, steps=steps,
                    cfg_scale=cfg_scale, seed=seed, width=width, height=height, batch_size=len(prompts),
                    do_not_save_grid=True, do_not_save_samples=True, do_not_reload_embeddings=True)
                p.disable_extra_networks = True
                p.cached_c, p.cached_uc = empty_cond_cache(), empty_cond_cache()  # the vectors change, the text not
                if prepare is not None:
                    prepare(p)
                with contextlib.closing(p):
                    processed = processing.process_images(p)
            return processed.images[:len(prompts)]
        finally:
            torch.set_rng_state(rng[0])
            random.setstate(rng[1])


def is_sd2(sd_model) -> bool:
    """An SD2 model: the WebUI's flag, or its text encoder OpenCLIP's (reForge sets ``is_sd2`` from the text model's
    ``model`` attribute after wrapping it in its own class, which has none: SD2 is flagged False there)."""
    wrapped = getattr(getattr(sd_model, "cond_stage_model", None), "wrapped", None)
    return bool(getattr(sd_model, "is_sd2", False)) or type(wrapped).__name__ == "FrozenOpenCLIPEmbedder"


def model_alphas_cumprod(sd_model) -> torch.Tensor:
    """The schedule the model was trained with: since v1.8 the WebUI swaps ``alphas_cumprod`` per generation (a
    downcast copy, or the zero-terminal-SNR rescale of 1.9/1.10's ``apply_alpha_schedule_override``) and keeps the
    model's own in ``alphas_cumprod_original``."""
    original = getattr(sd_model, "alphas_cumprod_original", None)
    schedule = original if original is not None else sd_model.alphas_cumprod
    return schedule.detach().float().cpu()


def empty_cond_cache() -> list:
    """A fresh conditioning cache in the WebUI's shape: [key, conds] up to v1.8, [key, conds, infotext params] from
    1.9 (whose ``get_conds_with_caching`` writes the third item)."""
    return [None] * len(getattr(processing.StableDiffusionProcessing, "cached_c", None) or [None, None])


class WebUIReporter(Reporter):
    """Progress into the WebUI's own progress bar (``shared.state``); interrupt from its Interrupt button."""

    def __init__(self, on_step=None, on_preview=None):
        self.on_step, self.on_preview = on_step, on_preview
        self.lines: list[str] = []

    def begin(self, job, total, start=0):
        shared.state.job = job
        shared.state.job_count = total
        shared.state.job_no = start

    def step(self, info):
        shared.state.job_no = info["step"]
        if self.on_step:
            self.on_step(info)
        else:
            shared.state.textinfo = f"step {info['step']}/{shared.state.job_count}: loss {info['loss']:.5f}"

    def message(self, text):
        self.lines.append(text)
        print(f"[SCAL-SDT] {text}")

    def preview(self, step, images, paths):
        if images:
            shared.state.assign_current_image(images[0])
        if self.on_preview:
            self.on_preview(step, images, paths)

    def should_stop(self):
        return bool(shared.state.interrupted)


def reload_embeddings() -> None:
    """New embedding files appear in the WebUI without a restart, and no cached conditioning of an old
    version of them is reused (the WebUI's cond cache is keyed on the prompt text only). Forge has no
    ``model_hijack.embedding_db``: each text engine of its loaded model keeps its own database, the extra-networks
    page another (its API's list follows on POST /sdapi/v1/refresh-embeddings)."""
    db = getattr(sd_hijack.model_hijack, "embedding_db", None)
    if db is not None:
        db.load_textual_inversion_embeddings(force_reload=True)
    else:
        for engine in list(vars(shared.sd_model).values()):
            if hasattr(getattr(engine, "embeddings", None), "load_textual_inversion_embeddings"):
                engine.embeddings.load_textual_inversion_embeddings()
        try:
            from modules import ui_extra_networks_textual_inversion as page

            page.embedding_db.load_textual_inversion_embeddings(force_reload=True, sync_with_sd_model=False)
        except (ImportError, AttributeError):
            pass
    for cache in (getattr(processing.StableDiffusionProcessing, "cached_c", None),
                  getattr(processing.StableDiffusionProcessing, "cached_uc", None)):
        if cache is not None:
            cache[0] = cache[1] = None


def lora_dir() -> str:
    """The WebUI's Lora folder (its built-in Lora extension's --lora-dir)."""
    import os

    from modules import paths

    return getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(paths.models_path, "Lora")


def reload_loras() -> None:
    """New LoRA files are usable by name in a prompt (<lora:NAME:1>) without a restart: the built-in Lora
    extension's list is rebuilt (it is importable as ``networks`` once the WebUI has loaded it)."""
    import sys

    networks = sys.modules.get("networks")
    if networks is not None and hasattr(networks, "list_available_networks"):
        networks.list_available_networks()
    forget_forge_loras(networks)


#: never a Forge LoRA hash (they are ``str`` of a list): the next generation applies its LoRAs afresh
STALE_LORA_HASH = "scal-sdt: LoRA files changed"


def forget_forge_loras(networks) -> None:
    """Forge's Lora (and reForge's) keeps each file's tensors by file name (``load_lora_state_dict``, an
    lru_cache) and skips the patching when a generation names the same files at the same strengths as the last
    one: a LoRA written again under its name (a run with overwrite) would keep being applied as it was until a
    restart. Forge's patchers also skip merging when the same (file, strength) patches come again
    (``LoraLoader.loaded_hash``, on the UNet's and the CLIP's patcher). Drop all three, so the next generation reads
    the files again and merges them anew (the loader restores its backed-up weights first). A1111 (no such caches) is
    left alone."""
    cache = getattr(networks, "load_lora_state_dict", None)
    if callable(getattr(cache, "cache_clear", None)):
        cache.cache_clear()
    model = shared.sd_model
    if isinstance(getattr(model, "current_lora_hash", None), str):
        model.current_lora_hash = STALE_LORA_HASH
    parts = getattr(model, "forge_objects", None)
    for part in (getattr(parts, "unet", None), getattr(parts, "clip", None)):
        patcher = getattr(part, "patcher", part)  # Forge's CLIP holds its ModelPatcher as .patcher
        loader = getattr(patcher, "lora_loader", None)
        if isinstance(getattr(loader, "loaded_hash", None), str):
            loader.loaded_hash = STALE_LORA_HASH


#: what the DreamBooth form's checkpoint list shows first: train the model the WebUI has loaded now
LOADED_CHECKPOINT = "(the loaded checkpoint)"


def checkpoint_choices() -> list[str]:
    """The DreamBooth form's source checkpoints: the loaded one, then the WebUI's list."""
    from modules import sd_models

    return [LOADED_CHECKPOINT, *sd_models.checkpoint_tiles()]


def find_checkpoint(title: str):
    """The WebUI's CheckpointInfo for ``title`` (a title, file name or part of one, as the WebUI matches them);
    None for the loaded one (empty or :data:`LOADED_CHECKPOINT`); a name not in its list is a ValueError."""
    from modules import sd_models

    if title in ("", LOADED_CHECKPOINT):
        return None
    info = sd_models.get_closet_checkpoint_match(title)
    if info is None:
        raise ValueError(f"model: no checkpoint {title!r} in the WebUI's list (GET /sdapi/v1/sd-models lists them); "
                         "choose one of: " + ", ".join(sd_models.checkpoint_tiles()[:20]))
    return info


@contextlib.contextmanager
def checkpoint_loaded(title: str):
    """The WebUI's model switched to the checkpoint ``title`` of its list for the block, and the one loaded before
    loaded again afterwards — as the WebUI's own ``override_settings`` does for one generation (the option
    ``sd_model_checkpoint`` follows, so the WebUI's txt2img, class images included, keeps the switched model).
    ``title`` empty or :data:`LOADED_CHECKPOINT`: the loaded model, nothing switched."""
    from modules import sd_models

    info = find_checkpoint(title)
    loaded = getattr(shared.sd_model, "sd_checkpoint_info", None)
    if info is None or (loaded is not None and loaded.filename == info.filename):
        yield
        return
    kept = shared.opts.sd_model_checkpoint
    print(f"[SCAL-SDT] loading {info.title} for this run; {loaded.title if loaded else 'the previous model'} is "
          f"loaded again afterwards")
    shared.opts.set("sd_model_checkpoint", info.title, is_api=True, run_callbacks=False)
    try:
        sd_models.reload_model_weights(info=info)
        yield
    finally:
        setattr(shared.opts, "sd_model_checkpoint", kept)
        if loaded is not None:
            sd_models.reload_model_weights(info=loaded)


def reload_checkpoints() -> None:
    """A new checkpoint file appears in the WebUI's checkpoint list without a restart."""
    from modules import sd_models

    sd_models.list_models()


def reload_hypernetworks() -> None:
    """New hypernetwork files appear in the WebUI's list (Settings, the extra-networks page) without a restart."""
    shared.reload_hypernetworks()


class BlipCaptioner:
    """The WebUI's BLIP (its Interrogate model, from its models/BLIP folder) captioning one image at a time; loaded on
    first use as the Interrogate button does, sent back to RAM by :meth:`release` when the run ends."""

    def __init__(self):
        self.loaded = False

    def __call__(self, image: Image.Image) -> str:
        it = shared.interrogator
        if not self.loaded:
            lowvram.send_everything_to_cpu()
            devices.torch_gc()
            try:
                if it.blip_model is None:
                    it.blip_model = it.load_blip_model()
                    if not shared.cmd_opts.no_half and not it.running_on_cpu:
                        it.blip_model = it.blip_model.half()
            except Exception as e:  # no weights and no network, a broken file
                raise RuntimeError(f"the WebUI's BLIP could not load ({type(e).__name__}: {e}); its Interrogate "
                                   f"button needs the same files") from None
            it.blip_model = it.blip_model.to(devices.device_interrogate)
            it.dtype = next(it.blip_model.parameters()).dtype
            self.loaded = True
        return it.generate_caption(image.convert("RGB"))

    def release(self) -> None:
        if self.loaded:
            shared.interrogator.send_blip_to_ram()
            devices.torch_gc()
            self.loaded = False
