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

SIZES = {  # parameter counts of the published models (UNet, text encoders, VAE) and their native size
    "sd1": (ModelSize(859_520_964, 123_060_480, 83_653_863, "sd1"), 512),
    "sd2": (ModelSize(865_910_724, 340_387_840, 83_653_863, "sd2"), 768),
    "sdxl": (ModelSize(2_567_463_684, 817_720_320, 83_653_863, "sdxl"), 1024),
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
