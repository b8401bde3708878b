"""Memory presets: each one makes a valid config, the user's own options win, and bigger cards never save more."""
import dataclasses

import pytest
import torch

from recording import RecordingReporter
from scal_sdt.demo_data import make_concept_folder
from scal_sdt.host.families import SD1, SD2, SDXL
from scal_sdt.host.placement import MEMORY_MODES
from scal_sdt.host.standalone import load_host
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.trainer import train_embedding
from scal_sdt.training.options import TrainingOptions
from scal_sdt.training.presets import FAMILIES, PRESETS, apply_preset, preset_names

COMBINATIONS = [(p, f) for p in preset_names() for f in FAMILIES]
OPTION_NAMES = {f.name for f in dataclasses.fields(TrainingOptions)}


def base(**kw):
    return EmbeddingConfig(name="zq", **kw)


def test_names_run_from_the_smallest_card_up():
    assert preset_names() == ("6gb", "8gb", "12gb", "24gb")
    assert all(set(PRESETS[p]) == set(FAMILIES) for p in preset_names())


@pytest.mark.parametrize("preset,family", COMBINATIONS)
def test_every_preset_builds_a_valid_embedding_config(preset, family):
    overrides = PRESETS[preset][family]
    assert set(overrides) <= OPTION_NAMES
    cfg = apply_preset(base(), family, preset=preset)
    assert isinstance(cfg, EmbeddingConfig) and cfg.name == "zq"
    assert {k: getattr(cfg, k) for k in overrides} == overrides
    assert cfg.optimizer == "adamw"  # a few vectors: an 8-bit optimizer would save nothing


def test_the_result_is_validated(monkeypatch):
    monkeypatch.setitem(PRESETS["6gb"], "sd1", dict(PRESETS["6gb"]["sd1"], memory_mode="tiny"))
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        apply_preset(base(), "sd1", preset="6gb")


def test_options_the_user_gave_win():
    cfg = apply_preset(base(batch_size=3, gradient_checkpointing=True), "sd1",
                       explicit={"batch_size", "gradient_checkpointing"}, preset="24gb")
    assert (cfg.batch_size, cfg.gradient_checkpointing) == (3, True)
    assert (cfg.grad_accum, cfg.precision, cfg.offload_vae) == (1, "bf16", False)  # the rest from the preset
    # a default value the user did not name is the preset's to change
    assert apply_preset(base(batch_size=3), "sd1", preset="24gb").batch_size == 8


def test_unknown_preset_or_family_is_refused_by_name():
    with pytest.raises(ValueError, match="preset must be one of 6gb, 8gb, 12gb, 24gb, not '4gb'"):
        apply_preset(base(), "sd1", preset="4gb")
    with pytest.raises(ValueError, match="family 'sd3'.*sd1, sd2, sdxl"):
        apply_preset(base(), "sd3", preset="8gb")


def test_the_preset_field_is_read_when_none_is_passed():
    @dataclasses.dataclass(kw_only=True)
    class WithPreset(EmbeddingConfig):
        preset: str = ""

    cfg = WithPreset(name="zq")
    assert apply_preset(cfg, "sdxl") is cfg  # no preset: nothing changes
    assert apply_preset(dataclasses.replace(cfg, preset="6gb"), "sdxl").memory_mode == "lowvram"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bigger_card_never_saves_more_memory(family):
    rows = [PRESETS[p][family] for p in preset_names()]
    for small, big in zip(rows, rows[1:]):
        assert small["batch_size"] * small["grad_accum"] <= big["batch_size"] * big["grad_accum"]
        assert small["batch_size"] <= big["batch_size"]
        assert small["gradient_checkpointing"] or not big["gradient_checkpointing"]
        assert small["offload_vae"] or not big["offload_vae"]
        assert MEMORY_MODES.index(small["memory_mode"]) >= MEMORY_MODES.index(big["memory_mode"])


def test_bigger_models_never_get_less_help_on_the_same_card():
    for p in preset_names():
        sd1, sdxl = PRESETS[p]["sd1"], PRESETS[p]["sdxl"]
        assert sdxl["batch_size"] <= sd1["batch_size"]
        assert sdxl["gradient_checkpointing"] or not sd1["gradient_checkpointing"]
        assert MEMORY_MODES.index(sdxl["memory_mode"]) >= MEMORY_MODES.index(sd1["memory_mode"])


def test_the_families_are_the_hosts_family_names():
    assert set(FAMILIES) == {SD1.name, SD2.name, SDXL.name}


def test_the_smallest_card_preset_trains(tmp_path):
    """SDXL on 6 GB (lowvram, checkpointing, 1 x 4 accumulation) runs end to end; fp32 as on any CPU."""
    cfg = base(model="tiny-sdxl", data=str(make_concept_folder(tmp_path / "data", count=4)), steps=1, precision="fp32",
               resolution=64, template="subject", save_every=0, preview_every=0, out=str(tmp_path / "emb"),
               log_dir=str(tmp_path / "run"))
    cfg = apply_preset(cfg, "sdxl", explicit={"precision"}, preset="6gb")
    assert (cfg.memory_mode, cfg.gradient_checkpointing, cfg.precision) == ("lowvram", True, "fp32")
    host = load_host(cfg.model, "cpu", memory_mode=cfg.memory_mode, precision=cfg.precision)
    result = train_embedding(cfg, host, RecordingReporter())
    assert result.step == 1 and result.final_path.exists()


# -- LoRA: the same presets (a LoRA step holds what a TI step holds, the frozen weights and the UNet's activations,
# and trains a small state) --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,family", COMBINATIONS)
def test_every_preset_builds_a_valid_lora_config(preset, family):
    from scal_sdt.lora.config import LoraConfig

    cfg = apply_preset(LoraConfig(name="zq", instance_data="data", rank=8, lr="1e-3"), family, explicit={"rank", "lr"},
                       preset=preset)
    assert isinstance(cfg, LoraConfig) and (cfg.name, cfg.rank, cfg.lr) == ("zq", 8, "1e-3")
    assert {k: getattr(cfg, k) for k in PRESETS[preset][family]} == PRESETS[preset][family]


def test_a_lora_run_prepared_with_a_preset_gets_it_and_the_smallest_card_trains(tmp_path):
    """`train-lora --preset 6gb` on SDXL goes through runs.prepare like every trainer: lowvram (the UNet's blocks
    streamed), checkpointing, batch 1 x 4; one step trains, the file changes the UNet, the weights are untouched."""
    from scal_sdt import runs
    from scal_sdt.lora.adapters import load_lora
    from scal_sdt.lora.config import LoraConfig

    said = []
    cfg = LoraConfig(name="zq", model="tiny-sdxl", instance_data=str(make_concept_folder(tmp_path / "data", count=4)),
                     instance_prompt="a photo of [name]", rank=4, alpha=4, lr="1e-2", steps=1, resolution=64,
                     preset="6gb", out=str(tmp_path / "lora"), log_dir=str(tmp_path / "run"), save_every=0,
                     preview_every=0, device="cpu")
    run = runs.prepare(cfg, explicit={"name", "model", "instance_data", "instance_prompt", "rank", "alpha", "lr",
                                      "steps", "resolution", "preset", "out", "log_dir", "save_every",
                                      "preview_every", "device"}, say=said.append)
    assert (run.cfg.memory_mode, run.cfg.gradient_checkpointing, run.cfg.batch_size, run.cfg.grad_accum,
            run.cfg.precision) == ("lowvram", True, 1, 4, "auto")  # not the preset's fp16: it only slows a CPU
    assert said and "preset 6gb for sdxl" in said[0]
    host = run.host
    unet = host.trainable_modules()[0]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    result = runs.train(run, RecordingReporter())
    assert result.step == 1 and result.final_path.exists()
    after = unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    lora = load_lora(result.final_path, host.lora_targets(), "sdxl")
    assert any(t.abs().sum() > 0 for k, t in lora.file_tensors().items() if k.endswith("lora_up.weight"))
