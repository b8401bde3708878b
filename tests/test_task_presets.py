"""Task presets (character, object, style, concept x SD1 / SD2 / SDXL, for each trainer): picked by name, combined with
the memory presets, and the options the user gives win."""
import dataclasses
import tomllib

import pytest

from scal_sdt import cli, runs
from scal_sdt.training.presets import PRESETS
from scal_sdt.training.task_presets import FAMILIES, TASK_PRESETS, TASKS, task_overrides

REQUIRED = {"name": "x", "data": "d", "instance_prompt": "a photo of sks dog"}


@pytest.mark.parametrize("command", sorted(TASK_PRESETS))
def test_every_task_and_family_sets_real_options_with_valid_values(command):
    cls = runs.config_for_command(command)
    fields = {f.name for f in dataclasses.fields(cls)}
    memory = {k for by_family in PRESETS.values() for values in by_family.values() for k in values}
    assert set(TASK_PRESETS[command]) == set(TASKS)
    for task in TASKS:
        for family in FAMILIES:
            values = task_overrides(command, task, family)
            assert set(values) <= fields, (task, family, set(values) - fields)
            assert not set(values) & memory  # what the memory presets decide stays theirs: the two combine
            cls(**{k: v for k, v in REQUIRED.items() if k in fields}, **values)  # every value passes the config's own checks


def test_families_differ_where_the_table_says():
    assert task_overrides("train-embedding", "style", "sd1")["lr"] == "0.003"
    assert task_overrides("train-embedding", "style", "sdxl")["lr"] == "0.002"
    assert task_overrides("dreambooth", "character", "sd2")["lr"] == "1e-6"
    assert task_overrides("train-lora", "style", "sd1")["network"] == "locon"


def test_resolve_applies_task_then_memory_preset_and_keeps_the_users_options():
    cfg = runs.config_for_command("train-embedding")(name="x", task_preset="style", preset="8gb", steps=100)
    out = runs.resolve(cfg, "sd1", "cuda", given={"name", "task_preset", "preset", "steps"}, say=lambda _: None)
    assert out.template == "style_filewords" and out.vectors == 8 and out.lr == "0.003"  # the task
    assert out.batch_size == 2 and out.grad_accum == 2 and out.gradient_checkpointing  # the card
    assert out.steps == 100  # the user's


def test_an_unknown_task_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="task_preset must be one of"):
        runs.config_for_command("train-lora")(name="x", task_preset="landscape")


def test_the_command_line_combines_both_presets(tmp_path):
    path = tmp_path / "resolved.toml"
    assert cli.main(["train-lora", "--model", "tiny-sdxl", "--name", "s", "--task-preset", "style", "--preset", "12gb",
                     "--rank", "4", "--instance-data", "d", "--save-config", str(path)]) == 0
    out = tomllib.loads(path.read_text())
    assert out["network"] == "locon" and out["conv_rank"] == 8 and out["noise_offset"] == 0.05  # style
    assert out["rank"] == 4  # given
    assert out["batch_size"] == PRESETS["12gb"]["sdxl"]["batch_size"]  # the 12gb card, for SDXL
