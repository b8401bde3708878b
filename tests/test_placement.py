"""Memory modes, watched through a fake device map (no GPU needed)."""
import torch

from scal_sdt.host.components import Components
from scal_sdt.host.standalone import StandaloneHost
from scal_sdt.host.tiny import build_tiny

def make_host(mode):
    comps: Components = build_tiny("tiny-sd1")
    log = {}

    def mover(module, device):
        tag = "gpu" if device.type == "cuda" else "cpu"
        for p in module.parameters():
            log[id(p)] = tag

    host = StandaloneHost(comps, device="cpu", memory_mode=mode, mover=mover)
    # pretend the compute device is a GPU: re-point the placement at a fake cuda device
    host.placement.device = torch.device("cuda")
    host.placement.resident = set()
    for modules in host.placement.parts.values():
        for m in modules:
            mover(m, torch.device("cpu"))
    return host, comps, log


def on_gpu(module, log):
    return {log[id(p)] for p in module.parameters()}


def test_medvram_keeps_only_the_parts_a_step_needs():
    host, comps, log = make_host("medvram")
    te, unet, vae = comps.text_encoders[0], comps.unet, comps.vae
    with host.on_device("vae"):
        assert on_gpu(vae, log) == {"gpu"} and on_gpu(unet, log) == {"cpu"} and on_gpu(te, log) == {"cpu"}
    # an embedding training step: text encoder and UNet together, VAE away
    with host.on_device("text", "unet"):
        assert on_gpu(te, log) == {"gpu"} and on_gpu(unet, log) == {"gpu"} and on_gpu(vae, log) == {"cpu"}
    with host.on_device("unet"):
        assert on_gpu(te, log) == {"cpu"}


def test_lowvram_streams_unet_blocks_one_at_a_time():
    host, comps, log = make_host("lowvram")
    unet = comps.unet
    seen = []
    blocks = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)

    def spy(module, args):
        seen.append(sum(1 for b in blocks if on_gpu(b, log) == {"gpu"}))

    for b in blocks:  # runs after the placement's pre-hook
        b.register_forward_pre_hook(spy)
    with host.on_device("text", "unet"):
        assert on_gpu(unet.conv_in, log) == {"gpu"}
        assert all(on_gpu(b, log) == {"cpu"} for b in blocks)
        with torch.no_grad():
            cond = host.encode_prompts(["x"], size=(64, 64))
            host.predict(torch.randn(1, 4, 8, 8), torch.tensor([10]), cond)
    assert seen and max(seen) == 1  # never more than one big block on the device
    assert all(on_gpu(b, log) == {"cpu"} for b in blocks)


def test_normal_mode_keeps_everything_and_park_moves_the_vae():
    host, comps, log = make_host("normal")
    with host.on_device("text"):
        pass
    host.placement._place(set(host.placement.parts))
    assert on_gpu(comps.vae, log) == {"gpu"}
    host.park("vae")
    assert on_gpu(comps.vae, log) == {"cpu"} and on_gpu(comps.unet, log) == {"gpu"}
    with host.on_device("vae"):
        assert on_gpu(comps.vae, log) == {"gpu"} and on_gpu(comps.unet, log) == {"gpu"}
