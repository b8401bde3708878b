"""DreamBooth's memory presets (dreambooth/presets.py): a full fine-tune holds the UNet's weights, gradients and
optimizer state, so its presets choose the optimizer, the fused step and the weights' dtype too. Each one's
preflight estimate fits its card (SDXL on 6 GB excepted, as documented), and a DreamBooth run resolves its preset
from that table while the other trainers keep the shared one."""
import pytest

from scal_sdt.dreambooth.config import DreamBoothConfig
from scal_sdt.dreambooth.preflight import ModelSize, estimate
from scal_sdt.dreambooth.presets import DREAMBOOTH_PRESETS
from scal_sdt.runs import resolve
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.training.presets import FAMILIES, PRESETS

SIZES = {  # parameter counts of the published models (UNet, text encoders, VAE, Adafactor's state of the UNet and
    # of the text encoders, counted from their shapes) and their native size
    "sd1": (ModelSize(859_520_964, 123_060_480, 83_653_863, "sd1", 457_589_700, 338_253), 512),
    "sd2": (ModelSize(865_910_724, 340_387_840, 83_653_863, "sd2", 408_086_212, 815_437), 768),
    "sdxl": (ModelSize(2_567_463_684, 817_720_320, 83_653_863, "sdxl", 244_330_500, 1_665_178), 1024),
}


def dreambooth(**options) -> DreamBoothConfig:
    return DreamBoothConfig(name="x", instance_data="d", **options)


@pytest.mark.parametrize("card", list(PRESETS))
def test_every_preset_fits_its_card_by_the_preflight_estimate(card):
    assert set(DREAMBOOTH_PRESETS) == set(PRESETS) and set(DREAMBOOTH_PRESETS[card]) == set(FAMILIES)
    gib = int(card.removesuffix("gb"))
    for family, (size, resolution) in SIZES.items():
        cfg = resolve(dreambooth(preset=card), family, "cuda", say=lambda _: None)
        peak = estimate(cfg, size, resolution).peak_mib / 1024
        if (card, family) == ("6gb", "sdxl"):  # 4.8 GiB of bf16 weights + 1024 px activations: LoRA's card
            assert gib < peak < 8, peak
        else:
            assert peak < gib, (card, family, peak)


def test_a_dreambooth_run_takes_its_own_table_and_says_what_it_chose():
    said = []
    cfg = resolve(dreambooth(preset="8gb"), "sd1", "cpu", say=said.append)
    assert (cfg.optimizer, cfg.fused_backward, cfg.master_weights, cfg.grad_accum) == ("adafactor", True, "fp32", 1)
    assert cfg.gradient_checkpointing and cfg.cache_text and cfg.precision == "auto"  # a CPU keeps its precision
    assert said == ["preset 8gb for sd1: batch 1 x 1, auto, memory normal, checkpointing True, optimizer adafactor "
                    "stepped in the backward pass, fp32 weights"]
    mine = resolve(dreambooth(preset="8gb", optimizer="adamw"), "sd1", "cuda", {"optimizer"}, say=lambda _: None)
    assert mine.optimizer == "adamw" and mine.fused_backward  # the option given wins, the rest is the preset's
    ti = resolve(EmbeddingConfig(name="x", data="d", preset="8gb"), "sd1", "cuda", say=lambda _: None)
    assert ti.optimizer == "adamw" and ti.batch_size == PRESETS["8gb"]["sd1"]["batch_size"]


def test_adafactors_state_is_counted_from_the_shapes_as_transformers_keeps_it():
    """transformers' Adafactor factors a weight over its last two dimensions: a convolution's kernel keeps
    2·out·in·k numbers (2/3 of a 3x3 kernel, twice a 1x1's), which is most of SD1's 1.7 GiB of Adafactor state.
    The count is the state one real step leaves, and the estimate carries it."""
    import torch
    from transformers.optimization import Adafactor

    from scal_sdt.dreambooth.preflight import ADAFACTOR_PER_WEIGHT, adafactor_state

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.Conv2d(16, 16, 1), torch.nn.GroupNorm(4, 16),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 10))
    opt = Adafactor(net.parameters(), lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
    net(torch.randn(2, 8, 8, 8)).square().mean().backward()
    opt.step()
    held = sum(v.numel() for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor))
    assert adafactor_state([net]) == held
    conv3, conv1 = net[0].weight, net[1].weight
    assert adafactor_state([net[0]]) - 16 - 2 == 2 * 16 * 8 * 3 and conv3.numel() == 16 * 8 * 9  # + its bias, + RMS
    assert adafactor_state([net[1]]) - 16 - 2 == 2 * conv1.numel()
    size, resolution = SIZES["sd1"]
    cfg = dreambooth(optimizer="adafactor", gradient_checkpointing=True, fused_backward=True, cache_text=True)
    assert estimate(cfg, size, resolution).parts["optimizer"] == pytest.approx(457_589_700 * 4 / 2 ** 20)  # 1.7 GiB
    bare = ModelSize(size.unet, size.text, size.vae, "sd1")  # counts only: the published model's share
    assert estimate(cfg, bare, resolution).parts["optimizer"] == pytest.approx(1746, rel=1e-3)
    assert ADAFACTOR_PER_WEIGHT["sdxl"][0] < ADAFACTOR_PER_WEIGHT["sd2"][0] < ADAFACTOR_PER_WEIGHT["sd1"][0]
