"""The standalone host: a model view over a checkpoint file, a diffusers folder or a built-in tiny model."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image

from .attention import kv_projections
from .base import Conditioning, Host, TextEncoderInfo, to_pil
from .checkpoint import load_checkpoint, load_diffusers_folder
from .components import Components
from .placement import Mover, Placement, move, resolve_device
from .prompt import PlaceholderEmbedding, splice_plan, tokenize, with_padding
from .sampler import sample_ddim
from .schedule import NoiseSchedule, scaled_linear_alphas_cumprod
from .tiny import TINY_NAMES, build_tiny
from .toy import TOY_NAME, toy_checkpoint
from .tokenizer import clip_tokenizer


BUILTIN_NAMES = (TOY_NAME, *TINY_NAMES)


def load_components(model: str) -> Components:
    """``toy`` (the toy world's trained SD1 model), ``tiny-sd1`` / ``tiny-sd2`` / ``tiny-sdxl`` (random weights),
    a single-file checkpoint, or a diffusers folder."""
    if model == TOY_NAME:
        components = load_checkpoint(toy_checkpoint())
        components.name = TOY_NAME
        return components
    if model in TINY_NAMES:
        return build_tiny(model)
    path = Path(model)
    if path.is_dir():
        return load_diffusers_folder(path)
    if path.is_file():
        return load_checkpoint(path)
    raise FileNotFoundError(f"model {model!r} is neither a built-in ({', '.join(BUILTIN_NAMES)}), a checkpoint file "
                            f"nor a diffusers folder")


class StandaloneHost(Host):
    def __init__(self, components: Components, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                 memory_mode: str = "normal", mover: Mover = move):
        self.components = components
        self.family = components.family
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model_name = components.name
        self.source = components.source or components.name
        self.schedule = NoiseSchedule(scaled_linear_alphas_cumprod(), self.family.prediction_type)
        self.latent_factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
        self.native_resolution = int(components.unet.config.sample_size) * self.latent_factor
        self.tokenizer = clip_tokenizer()
        self._hash: str | None = None
        self._table_wrappers: list[PlaceholderEmbedding] = []
        for te in components.text_encoders:
            emb = te.text_model.embeddings if hasattr(te, "text_model") else te.embeddings
            if not isinstance(emb.token_embedding, PlaceholderEmbedding):
                emb.token_embedding = PlaceholderEmbedding(emb.token_embedding)
            self._table_wrappers.append(emb.token_embedding)
        for m in components.modules().values():
            if any(p.dtype != self.dtype for p in m.parameters()):
                m.to(self.dtype)
            m.eval().requires_grad_(False)
        unet = components.unet
        streamed = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
        self.placement = Placement({"text": list(components.text_encoders), "unet": [unet], "vae": [components.vae]},
                                   self.device, memory_mode, mover=mover, streamed=streamed)

    # -- identity ---------------------------------------------------------------------------------------------
    @property
    def text_encoders(self) -> list[TextEncoderInfo]:
        return [TextEncoderInfo(spec.key, te.config.hidden_size)
                for spec, te in zip(self.family.encoders, self.components.text_encoders)]

    @property
    def model_hash(self) -> str:
        if self._hash is None:
            source = Path(self.components.source)
            digest = hashlib.sha256()
            if source.is_file():
                with open(source, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            else:
                for name, p in sorted(self.components.unet.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(p.detach().float().cpu().numpy().tobytes())
            self._hash = digest.hexdigest()[:10]
        return self._hash

    # -- text -------------------------------------------------------------------------------------------------
    def token_vectors(self, text: str) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        return {spec.key: table.wrapped.weight.detach()[ids.to(table.wrapped.weight.device)].float().cpu()
                for spec, table in zip(self.family.encoders, self._table_wrappers)}

    def encode_prompts(self, prompts, embeddings=None, size=(512, 512)) -> Conditioning:
        embeddings = embeddings or {}
        batch = tokenize(list(prompts), self.tokenizer, {n: next(iter(v.values())).shape[0] for n, v in embeddings.items()})
        contexts, pooled = [], None
        for spec, te, table in zip(self.family.encoders, self.components.text_encoders, self._table_wrappers):
            ids = with_padding(batch.ids, spec.pad_id).flatten(0, 1).to(self.device)
            table.pending = splice_plan(batch, {n: v[spec.key] for n, v in embeddings.items()})
            try:
                out = te(input_ids=ids, output_hidden_states=True)
            finally:
                table.pending = None
            hidden = out.hidden_states[spec.layer] if spec.layer != -1 else out.last_hidden_state
            if spec.layer != -1 and spec.final_norm:
                hidden = te.text_model.final_layer_norm(hidden) if hasattr(te, "text_model") else te.final_layer_norm(hidden)
            contexts.append(hidden.reshape(len(prompts), -1, hidden.shape[-1]))
            if spec.pooled:
                pooled = out.text_embeds.reshape(len(prompts), batch.windows, -1)[:, 0]
        context = torch.cat(contexts, dim=-1)
        time_ids = None
        if self.family.size_conditioning:
            h, w = size
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=self.device).repeat(len(prompts), 1)
        return Conditioning(context, pooled, time_ids)

    # -- unet / vae -------------------------------------------------------------------------------------------
    def predict(self, x_t, t, cond: Conditioning) -> torch.Tensor:
        added = None
        if self.family.size_conditioning:
            added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        return self.components.unet(x_t.to(self.dtype) if not torch.is_autocast_enabled() else x_t, t,
                                    encoder_hidden_states=cond.context, added_cond_kwargs=added).sample

    def encode_moments(self, pixels):
        vae = self.components.vae
        dist = vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        sf = vae.config.scaling_factor
        return (dist.mean * sf).float(), (dist.std * sf).float()

    def decode(self, latents):
        vae = self.components.vae
        return vae.decode((latents / vae.config.scaling_factor).to(self.device, self.dtype)).sample.float()

    def on_device(self, *parts):
        return self.placement.on_device(*parts)

    def park(self, part: str) -> None:
        self.placement.park(part)

    def kv_projections(self) -> list:
        return kv_projections(self.components.unet)

    def vae_module(self):
        return self.components.vae

    def trainable_modules(self, text: bool = False) -> list:
        return [self.components.unet] + (list(self.components.text_encoders) if text else [])

    def save_checkpoint(self, path, dtype=None):
        from .checkpoint import save_checkpoint

        return save_checkpoint(self.components, path, dtype=dtype)

    def unet_modules(self) -> dict:
        from .convert_keys import rename
        from .convert_unet import unet_pairs

        unet = self.components.unet
        named = {n + ".": m for n, m in unet.named_modules() if n}  # prefixes end with "." in the table
        renamed = rename(dict.fromkeys(named), unet_pairs(dict(unet.config)), reverse=True)
        return {k[:-1]: m for k, m in zip(renamed, named.values())}

    def lora_targets(self) -> dict:
        """The original-layout names (kohya's SDXL files, ours), diffusers' UNet names (kohya's SD1/SD2 files:
        ``lora_unet_down_blocks_0_attentions_0_…``) and the text encoders' (SD1/SD2
        ``lora_te_text_model_encoder_layers_0_…``; SDXL ``lora_te1_`` / ``lora_te2_``)."""
        targets = super().lora_targets()
        targets.update({"lora_unet_" + n.replace(".", "_"): m for n, m in self.components.unet.named_modules() if n})
        encoders = self.components.text_encoders
        for i, te in enumerate(encoders):
            prefix = "lora_te_" if len(encoders) == 1 else f"lora_te{i + 1}_"
            for n, m in te.named_modules():
                if n:
                    path = "text_model." + n.removeprefix("text_model.")  # transformers 5 drops it on CLIPTextModel
                    targets[prefix + path.replace(".", "_")] = m
        return targets

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        unet, vae = self.components.unet, self.components.vae
        unet.enable_gradient_checkpointing() if enabled else unet.disable_gradient_checkpointing()
        vae.enable_gradient_checkpointing() if enabled else vae.disable_gradient_checkpointing()  # APT's decode
        for te in self.components.text_encoders:
            on, off = ((te.activation_checkpointing_enable, te.activation_checkpointing_disable)
                       if hasattr(te, "activation_checkpointing_enable")  # transformers >= 5
                       else (te.gradient_checkpointing_enable, te.gradient_checkpointing_disable))
            on() if enabled else off()
            te.train(enabled)  # transformers only checkpoints in training mode; dropout is 0 in CLIP
        unet.train(enabled)

    # -- previews ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts, negative="", steps=20, cfg_scale=7.0, seed=0, width=None, height=None,
               embeddings=None, encode=None) -> list[Image.Image]:
        """``encode(prompts, negative, embeddings, size)``: another way to make the [prompts; negatives]
        conditioning (aesthetic gradients); by default the host's own."""
        width = width or self.native_resolution
        height = height or self.native_resolution
        n = len(prompts)
        with self.on_device("text"):  # one batch, so prompt and negative get the same number of windows
            if encode is not None:
                both = encode(list(prompts), negative, embeddings, (height, width))
            else:
                both = self.encode_prompts(list(prompts) + [negative] * n, embeddings, size=(height, width))
        cond, uncond = both.split(n)
        latent_channels = self.components.unet.config.in_channels
        shape = (1, latent_channels, height // self.latent_factor, width // self.latent_factor)
        # image i gets seed + i, as in the WebUI: a prompt's picture does not depend on its place in the batch
        x = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed + i)) for i in range(n)])
        x = x.to(self.device, torch.float32)

        def model(x_t, t, use_uncond):
            return self.predict(x_t, t, uncond if use_uncond else cond)

        with self.on_device("unet"):
            latents = sample_ddim(model, self.schedule, x, steps, cfg_scale)
        with self.on_device("vae"):
            pixels = self.decode(latents)
        return to_pil(pixels)


def load_host(model: str | Components, device: str = "auto", memory_mode: str = "normal",
              precision: str = "auto") -> StandaloneHost:
    """A host on ``model`` (a name, a path, or components already loaded). Frozen weights: fp32 on the CPU or with
    precision fp32, bf16 with precision bf16, else fp16."""
    dev = resolve_device(device)
    dtype = None
    if precision == "fp32" or dev.type == "cpu":
        dtype = torch.float32
    elif precision == "bf16":
        dtype = torch.bfloat16
    components = model if isinstance(model, Components) else load_components(model)
    host = StandaloneHost(components, device=dev, dtype=dtype, memory_mode=memory_mode)
    if isinstance(model, str):
        host.source = model  # as the user named it: "toy", a path
    return host
