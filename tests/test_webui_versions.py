"""The WebUI adapter against what changed in the WebUIs it is not run on in CI: A1111 1.9/1.10 (read at source: Forge's
commit e26abf87 "Gradio 4 + WebUI 1.10" and A1111's modules) and reForge's Forge-style backend (run:
tests/webui/test_in_reforge.py). Small doubles of the ``modules.*`` the adapter imports, with the attributes those
versions have, stand in for the WebUI."""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from scal_sdt.host.schedule import scaled_linear_alphas_cumprod
from scal_sdt.webui.hypernetwork_patch import HypernetworkPatch, patched_unet, transform_kv


class Processed:
    def __init__(self, images):
        self.images = images


def fake_webui(cache_len: int) -> dict[str, types.ModuleType]:
    """``modules.*`` as the adapter uses them; ``StableDiffusionProcessing.cached_c`` has ``cache_len`` items (2 up
    to v1.8, 3 from 1.9)."""
    mods = {name: types.ModuleType(name) for name in (
        "modules", "modules.devices", "modules.lowvram", "modules.processing", "modules.prompt_parser",
        "modules.sd_hijack", "modules.shared", "modules.textual_inversion", "modules.textual_inversion.textual_inversion")}
    devices = mods["modules.devices"]
    devices.device, devices.cpu = torch.device("cpu"), torch.device("cpu")
    devices.dtype_unet = devices.dtype_vae = torch.float32
    mods["modules.lowvram"].is_enabled = lambda m: False

    class StableDiffusionProcessing:
        cached_c = [None] * cache_len
        cached_uc = [None] * cache_len

    made = []

    class Txt2Img(StableDiffusionProcessing):
        def __init__(self, **kw):
            self.kw = kw
            made.append(self)

        def close(self):
            pass

    processing = mods["modules.processing"]
    processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img = StableDiffusionProcessing, Txt2Img
    processing.made = made
    processing.process_images = lambda p: Processed([f"image of {prompt}" for prompt in p.kw["prompt"]])
    db = types.SimpleNamespace(word_embeddings={}, register_embedding=lambda e, m: None,
                               register_embedding_by_name=lambda e, m, n: None)
    mods["modules.sd_hijack"].model_hijack = types.SimpleNamespace(embedding_db=db)
    mods["modules.shared"].sd_model = None
    mods["modules.textual_inversion.textual_inversion"].Embedding = object
    for name, mod in mods.items():
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(mods[parent], child, mod)
    return mods


@pytest.fixture(params=[2, 3], ids=["v1.8-cache", "v1.9-cache"])
def adapter(request, monkeypatch):
    for name, mod in fake_webui(request.param).items():
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules.pop("scal_sdt.webui.adapter", None)
    module = importlib.import_module("scal_sdt.webui.adapter")
    yield module
    sys.modules.pop("scal_sdt.webui.adapter", None)
    if hasattr(sys.modules.get("scal_sdt.webui"), "adapter"):
        delattr(sys.modules["scal_sdt.webui"], "adapter")


def sd1_model(**extra):
    model = types.SimpleNamespace(alphas_cumprod=scaled_linear_alphas_cumprod(), parameterization="eps",
                                  cond_stage_model=object(), scale_factor=0.18215, is_sd1=True)
    for k, v in extra.items():
        setattr(model, k, v)
    return model


def test_training_uses_the_models_schedule_not_the_last_generations_override(adapter):
    """1.9/1.10's ``apply_alpha_schedule_override`` leaves ``alphas_cumprod`` as the last generation wanted it (a
    downcast copy, or the zero-terminal-SNR rescale); the model's own is ``alphas_cumprod_original``."""
    original = scaled_linear_alphas_cumprod()
    rescaled = original.clone()
    rescaled[-1] = 4.8973451890853435e-08  # zero terminal SNR's last value, as A1111 clamps it
    host = adapter.WebUIHost(sd1_model(alphas_cumprod=rescaled.half(), alphas_cumprod_original=original))
    assert torch.equal(host.schedule.alphas_cumprod, original)
    host = adapter.WebUIHost(sd1_model())  # a WebUI without the attribute: its alphas_cumprod
    assert torch.equal(host.schedule.alphas_cumprod, original)


def test_reforges_sd2_is_known_by_its_text_encoder(adapter):
    """reForge flags its SD2 ``is_sd2 = False`` (it looks for ``model`` on its own CLIP wrapper, which has none):
    the OpenCLIP text encoder inside the wrapper says SD2; SD1 in the same wrapper stays SD1."""
    from scal_sdt.host.families import SD1, SD2

    def wrapper(inner: str):
        return types.SimpleNamespace(wrapped=type(inner, (), {})())

    sd2 = sd1_model(is_sd1=True, is_sd2=False, parameterization="v",
                    cond_stage_model=wrapper("FrozenOpenCLIPEmbedder"))  # reForge's flags for 768-v
    assert adapter.WebUIHost(sd2).family is SD2
    assert adapter.WebUIHost(sd1_model(cond_stage_model=wrapper("FrozenCLIPEmbedder"))).family is SD1
    assert adapter.WebUIHost(sd1_model(is_sd2=True)).family is SD2  # A1111's own flag


def test_an_sd3_model_is_refused_with_the_reason(adapter):
    with pytest.raises(RuntimeError, match="Stable Diffusion 3: SCAL-SDT trains SD1, SD2 and SDXL"):
        adapter.WebUIHost(sd1_model(is_sd3=True, is_sd1=False))


def test_a_preview_gives_the_generation_a_cond_cache_of_the_webuis_shape(adapter):
    """From 1.9 ``get_conds_with_caching`` writes a third item into each cache: a two-item list fails there."""
    host = adapter.WebUIHost(sd1_model())
    images = host.sample(["a red circle"], steps=2, width=64, height=64)
    assert images == ["image of a red circle"]
    p = sys.modules["modules.processing"].made[-1]
    expected = len(sys.modules["modules.processing"].StableDiffusionProcessing.cached_c)
    assert p.cached_c == [None] * expected and p.cached_uc == [None] * expected
    assert p.cached_c is not p.cached_uc


class LegacyVAE(torch.nn.Module):
    """ldm's (and reForge's ldm_patched's) AutoencoderKL layout: encoder -> quant_conv gives [mean, logvar]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.quant_conv = torch.nn.Conv2d(8, 8, 1)
        self.post_quant_conv = torch.nn.Conv2d(4, 4, 1)
        self.decoder = torch.nn.ConvTranspose2d(4, 3, 8, stride=8)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def reforge_model():
    vae = LegacyVAE()

    @torch.inference_mode()
    def decode_first_stage(z):  # reForge's patched decode: an inference tensor
        return vae.decode(z / 0.18215)

    return sd1_model(first_stage_model=vae, forge_objects=types.SimpleNamespace(unet=None, vae=None),
                     decode_first_stage=decode_first_stage)


def test_reforge_latents_are_the_posteriors_mean_and_std_from_its_vae(adapter):
    model = reforge_model()
    host = adapter.WebUIHost(model)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    mean, std = host.encode_moments(pixels)
    moments = model.first_stage_model.quant_conv(model.first_stage_model.encoder(pixels))
    assert torch.allclose(mean, moments[:, :4] * 0.18215, atol=1e-6)
    assert torch.allclose(std, torch.exp(0.5 * moments[:, 4:].clamp(-30, 20)) * 0.18215, atol=1e-6)
    assert mean.shape == (1, 4, 8, 8) and not mean.requires_grad


def test_reforge_decodes_are_usable_by_autograd(adapter):
    """reForge decodes under inference_mode; a preview or a loss must not get an inference tensor."""
    host = adapter.WebUIHost(reforge_model())
    image = host.decode(torch.randn(1, 4, 8, 8))
    assert not torch.is_inference(image)
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    host.decode_differentiable(latents).mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


class FakeHypernetwork:
    """A1111's Hypernetwork as its attention code reads it: ``layers`` = {width: (module_k, module_v)}."""

    def __init__(self, width: int, k_shift: float, v_shift: float):
        self.layers = {width: (Shift(k_shift), Shift(v_shift))}


class Shift(torch.nn.Module):
    def __init__(self, by):
        super().__init__()
        self.by = torch.nn.Parameter(torch.tensor(by))

    def forward(self, x):
        return x + self.by


def test_hypernetworks_change_keys_and_values_of_their_widths_only():
    context = torch.zeros(1, 4, 768)
    k, v = transform_kv([FakeHypernetwork(768, 1.0, 2.0), FakeHypernetwork(768, 10.0, 20.0)], context, context)
    assert torch.all(k == 11.0) and torch.all(v == 22.0)  # in order, each on the last one's output
    x = torch.zeros(1, 4, 320, dtype=torch.float16)
    k, v = transform_kv([FakeHypernetwork(768, 1.0, 2.0), FakeHypernetwork(320, 0.5, 0.25)], x, x)
    assert k.dtype == torch.float16 and torch.all(k == 0.5) and torch.all(v == 0.25)
    n, k, v = HypernetworkPatch([FakeHypernetwork(640, 1.0, 1.0)])(x, x, x, {})
    assert n is x and k is x and v is x  # a width it has no layer for


class FakeUnetPatcher:
    def __init__(self):
        self.patches = {}

    def clone(self):
        clone = FakeUnetPatcher()
        clone.patches = dict(self.patches)
        return clone

    def set_model_attn1_patch(self, fn):
        self.patches.setdefault("attn1", []).append(fn)

    def set_model_attn2_patch(self, fn):
        self.patches.setdefault("attn2", []).append(fn)


def test_the_generations_unet_gets_the_hypernetworks_and_the_shared_one_is_untouched():
    base = FakeUnetPatcher()
    unet = patched_unet(base, [None, FakeHypernetwork(768, 1.0, 2.0)])
    assert base.patches == {} and set(unet.patches) == {"attn1", "attn2"}
    context = torch.zeros(1, 2, 768)
    assert torch.all(unet.patches["attn2"][0](context, context, context, {})[2] == 2.0)
    assert patched_unet(base, []) is None and patched_unet(base, [None]) is None
    assert patched_unet(object(), [FakeHypernetwork(768, 1.0, 1.0)]) is None  # a backend without attention patches


def test_aesthetic_tuning_works_inside_inference_mode_and_puts_the_weights_back():
    """reForge computes a generation's conditioning under ``torch.inference_mode`` (A1111 under ``no_grad``): the
    accordion's tuning must still get gradients there, and leave the text tower exactly as it was."""
    from scal_sdt.aesthetic.gradient import AestheticSettings, Tower, tuned

    torch.manual_seed(0)
    tower_module = torch.nn.Linear(4, 3)
    table = torch.randn(8, 4)
    tower = Tower("clip_l", tower_module, lambda texts: tower_module(table[[len(t) % 8 for t in texts]]))
    before = {k: v.clone() for k, v in tower_module.state_dict().items()}
    with torch.inference_mode():
        with tuned([tower], ["a red star"], {"clip_l": torch.randn(1, 3)}, AestheticSettings(steps=5, lr=0.1)) as (
                first, last):
            tuned_out = tower.project(["a red star"])
        plain_out = tower.project(["a red star"])
    assert last > first  # the tuning moved the projection towards the row
    assert not torch.equal(tuned_out, plain_out)
    for k, v in tower_module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad is False for p in tower_module.parameters())  # its own flags (True) kept


def test_a_lora_written_again_is_read_again_by_forges_lora(adapter, monkeypatch):
    """Forge's (and reForge's) Lora caches each file's tensors by file name and skips the patching when the same
    files and strengths come again: after a run writes a LoRA, both are dropped, so an overwritten file is applied
    as it now is; a model without the hash (A1111) is left alone."""
    import functools

    reads = []

    @functools.lru_cache(maxsize=5)
    def load_lora_state_dict(filename):
        reads.append(filename)
        return {"read": len(reads)}

    listed = []
    networks = types.SimpleNamespace(load_lora_state_dict=load_lora_state_dict,
                                     list_available_networks=lambda: listed.append(1))
    monkeypatch.setitem(sys.modules, "networks", networks)
    merged = str([("/loras/x.safetensors", 1.0, 1.0, False)])  # Forge's LoraLoader: the patches last merged
    unet = types.SimpleNamespace(lora_loader=types.SimpleNamespace(loaded_hash=merged))
    clip = types.SimpleNamespace(patcher=types.SimpleNamespace(lora_loader=types.SimpleNamespace(loaded_hash=merged)))
    model = types.SimpleNamespace(current_lora_hash=str([["/loras/x.safetensors", 1.0, 1.0, False]]),
                                  forge_objects=types.SimpleNamespace(unet=unet, clip=clip))
    monkeypatch.setattr(sys.modules["modules.shared"], "sd_model", model)
    assert load_lora_state_dict("/loras/x.safetensors") == {"read": 1}
    adapter.reload_loras()
    assert listed == [1]
    assert load_lora_state_dict("/loras/x.safetensors") == {"read": 2}  # read from the disk again
    assert model.current_lora_hash == adapter.STALE_LORA_HASH != str([])  # no generation's hash matches it
    assert unet.lora_loader.loaded_hash == clip.patcher.lora_loader.loaded_hash == adapter.STALE_LORA_HASH  # merged anew
    a1111_model = types.SimpleNamespace()
    monkeypatch.setattr(sys.modules["modules.shared"], "sd_model", a1111_model)
    monkeypatch.setitem(sys.modules, "networks", types.SimpleNamespace(list_available_networks=lambda: None))
    adapter.reload_loras()
    assert vars(a1111_model) == {}


class CrossAttention(torch.nn.Module):
    """ldm's attention layer as the WebUI patches it: its class's forward is the attention the WebUI chose."""

    def __init__(self):
        super().__init__()
        self.to_k = torch.nn.Linear(4, 4)

    def forward(self, x, context=None):
        return "the WebUI's attention"


@pytest.mark.parametrize("chosen, ours", [("InvokeAI", "sdp"), ("Doggettx", "sdp"), ("", "sdp"),
                                           ("xformers", "the WebUI's attention"), ("sdp", "the WebUI's attention")])
def test_runs_use_memory_efficient_attention_where_the_webuis_keeps_whole_matrices(adapter, monkeypatch, chosen, ours):
    """Issue 22: InvokeAI's attention (the WebUI's choice on a CPU) keeps every layer's attention matrix for the
    backward pass; our runs take the WebUI's own scaled-dot-product forward for the run, and put it back after."""
    sdp = types.ModuleType("modules.sd_hijack_optimizations")
    sdp.scaled_dot_product_attention_forward = lambda self, x, context=None, mask=None, **kw: "sdp"
    monkeypatch.setitem(sys.modules, "modules.sd_hijack_optimizations", sdp)
    monkeypatch.setattr(sys.modules["modules"], "sd_hijack_optimizations", sdp, raising=False)
    monkeypatch.setattr(sys.modules["modules.sd_hijack"].model_hijack, "optimization_method", chosen, raising=False)
    unet = torch.nn.Sequential(CrossAttention(), torch.nn.Sequential(CrossAttention()))
    host = adapter.WebUIHost(sd1_model(model=types.SimpleNamespace(diffusion_model=unet), parameters=unet.parameters))
    host.begin_training()
    assert [m(torch.zeros(1)) for m in (unet[0], unet[1][0])] == [ours, ours]
    assert all(not p.requires_grad for p in unet.parameters())
    host.restore()
    assert [m(torch.zeros(1)) for m in (unet[0], unet[1][0])] == ["the WebUI's attention"] * 2
    assert all("forward" not in vars(m) for m in unet.modules()) and all(p.requires_grad for p in unet.parameters())


class BasicTransformerBlock(torch.nn.Module):
    """reForge's transformer block: a ``forward`` of its own, no ldm ``_forward`` behind a checkpoint wrapper."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x, context=None, transformer_options={}):
        self.calls += 1
        return torch.tanh(self.proj(x)) * context


class ResBlock(BasicTransformerBlock):
    """ldm's residual block: ``forward`` is ldm's checkpoint wrapper (switched off while we train), ``_forward`` the
    block."""

    def forward(self, x, emb):
        raise AssertionError("ldm's checkpoint wrapper is not the block to recompute")

    def _forward(self, x, emb):
        return super().forward(x, emb)


def test_checkpointing_recomputes_reforges_transformer_blocks_and_ldms_residual_blocks(adapter):
    """Issue 23: reForge's transformer blocks have no ``_forward``; they were left out of gradient checkpointing."""
    unet = torch.nn.Sequential(BasicTransformerBlock(), ResBlock())
    host = adapter.WebUIHost(sd1_model(model=types.SimpleNamespace(diffusion_model=unet), parameters=unet.parameters))
    context = torch.ones(1, 4, requires_grad=True)
    plain = unet[1]._forward(unet[0](torch.ones(1, 4), context=context, transformer_options={"block": ("input", 1)}),
                             context)
    (expected,) = torch.autograd.grad(plain.sum(), context)
    host.begin_training()
    host.set_gradient_checkpointing(True)
    out = unet[1](unet[0](torch.ones(1, 4), context=context, transformer_options={"block": ("input", 1)}), context)
    calls = [m.calls for m in unet]
    (grad,) = torch.autograd.grad(out.sum(), context)
    assert [m.calls - c for m, c in zip(unet, calls)] == [1, 1]  # each block run again in the backward pass
    assert torch.allclose(grad, expected) and torch.equal(out, plain)
    host.set_gradient_checkpointing(False)
    assert all("forward" not in vars(m) for m in unet.modules())
    host.restore()
