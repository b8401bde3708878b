"""Runs as files: --config FILE (TOML or JSON, flags win), --save-config, every run's config.toml, and bad keys and
values named with the file and line."""
import dataclasses
import json
import tomllib

import pytest
import torch
from safetensors.torch import load_file

from scal_sdt import cli
from scal_sdt.demo_data import make_concept_folder
from scal_sdt.config_files import ConfigFileError, load_config, read_file
from scal_sdt.textual_inversion.config import EmbeddingConfig


def saved(tmp_path, *argv, name="saved.toml"):
    path = tmp_path / name
    assert cli.main([*argv, "--save-config", str(path)]) == 0
    return path


def test_flags_given_win_over_the_file_and_the_file_over_defaults(tmp_path):
    src = tmp_path / "run.toml"
    src.write_text('command = "train-embedding"\nname = "fromfile"\nsteps = 40\nlr = 0.01\nflip = true\n'
                   'model = "tiny-sd1"\n')
    out = tomllib.loads(saved(tmp_path, "train-embedding", "--config", str(src), "--steps", "7", "--no-flip").read_text())
    assert out["name"] == "fromfile" and out["lr"] == "0.01"  # from the file (a number where text is expected)
    assert out["steps"] == 7 and out["flip"] is False  # the flags given
    assert out["batch_size"] == 1 and out["command"] == "train-embedding"  # the default; the command recorded


def test_json_works_the_same_and_a_saved_file_reads_back_equal(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps({"name": "j", "steps": 12, "model": "tiny-sd1"}))
    first = saved(tmp_path, "train-embedding", "--config", str(src), name="a.json")
    again = saved(tmp_path, "train-embedding", "--config", str(first), name="b.json")
    assert json.loads(first.read_text()) == json.loads(again.read_text())
    assert load_config(first, EmbeddingConfig, "train-embedding").steps == 12


def test_save_config_applies_the_memory_preset_but_keeps_what_the_user_gave(tmp_path):
    out = tomllib.loads(saved(tmp_path, "train-embedding", "--model", "tiny-sd1", "--name", "p", "--preset", "12gb",
                              "--grad-accum", "3").read_text())
    assert out["batch_size"] == 4 and out["grad_accum"] == 3  # the 12gb preset for SD1, and the user's own value


@pytest.mark.parametrize("name,text,line,words", [
    ("bad.toml", 'name = "x"\n\n# a comment\nstepz = 4\n', 4, ["unknown option 'stepz'", "did you mean steps"]),
    ("bad.toml", 'name = "x"\nsteps = "ten"\n', 2, ["steps must be a whole number"]),
    ("bad.toml", 'name = "x"\n\nvectors = 0\n', 3, ["vectors must be ≥ 1"]),
    ("bad.toml", 'name = "x"\noptimizer = "sgd"\n', 2, ["optimizer must be one of"]),
    ("bad.toml", 'name = "x"\nlr = "fast"\n', 2, ["lr", "fast"]),  # found by the config's own check
    ("bad.toml", 'command = "tag"\nname = "x"\n', 1, ["for scal-sdt tag, not train-embedding"]),
    ("bad.json", '{\n  "name": "x",\n  "batch_size": -2\n}\n', 3, ["batch_size must be ≥ 1"]),
    ("bad.json", '{\n  "name": "x",\n  "flip": "maybe"\n}\n', 3, ["flip must be true or false"]),
])
def test_bad_keys_and_values_are_named_with_the_file_and_line(tmp_path, capsys, name, text, line, words):
    path = tmp_path / name
    path.write_text(text)
    assert cli.main(["train-embedding", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:" in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("name,text,line", [("syntax.toml", 'name = "x"\nsteps = = 3\n', 2),
                                            ("syntax.json", '{\n "name": "x",\n "steps": 3,\n}\n', 4)])
def test_syntax_errors_give_line_and_column(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=rf"{name}:{line}:\d+: "):
        read_file(path)


def test_a_required_option_missing_from_both_is_named(tmp_path, capsys):
    path = tmp_path / "no-name.toml"
    path.write_text("steps = 3\n")
    assert cli.main(["train-embedding", "--config", str(path)]) == 2
    assert "--name is required" in capsys.readouterr().err


def test_a_saved_run_config_reproduces_the_run_bit_for_bit(tmp_path):
    data = make_concept_folder(tmp_path / "data", count=2, size=32)
    assert cli.main(["train-embedding", "--model", "tiny-sd1", "--data", str(data), "--resolution", "32", "--name", "rep",
                     "--steps", "3", "--lr", "0.05", "--seed", "7", "--flip", "--out", str(tmp_path / "a"),
                     "--log-dir", str(tmp_path / "run-a"), "--save-every", "0", "--preview-every", "0"]) == 0
    written = tmp_path / "run-a" / "config.toml"
    options = tomllib.loads(written.read_text())
    assert options["seed"] == 7 and options["flip"] is True and options["command"] == "train-embedding"
    # the same run from its file alone (only where it writes changes)
    assert cli.main(["train-embedding", "--config", str(written), "--out", str(tmp_path / "b"),
                     "--log-dir", str(tmp_path / "run-b")]) == 0
    a, b = load_file(tmp_path / "a" / "rep.safetensors"), load_file(tmp_path / "b" / "rep.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    again = tomllib.loads((tmp_path / "run-b" / "config.toml").read_text())
    assert {k: v for k, v in again.items() if k not in ("out", "log_dir")} == \
        {k: v for k, v in options.items() if k not in ("out", "log_dir")}


def test_a_form_is_refilled_from_a_run_folder_a_result_file_or_a_settings_file(tmp_path):
    from scal_sdt.config_files import past_options, write_config
    from scal_sdt.files import save_safetensors

    cfg = EmbeddingConfig(name="past", data="demo", steps=77, lr="0.02", flip=True)
    write_config(tmp_path / "run" / "config.toml", cfg, "train-embedding")
    options, notes = past_options(tmp_path / "run", EmbeddingConfig, "train-embedding")
    assert options["steps"] == 77 and options["lr"] == "0.02" and options["flip"] is True and notes == []
    meta = {**dataclasses.asdict(cfg), "an_old_option": 1}
    save_safetensors({"emb": torch.zeros(1, 4)}, tmp_path / "past.safetensors", {"scal_sdt": json.dumps(meta)})
    options, notes = past_options(tmp_path / "past.safetensors", EmbeddingConfig, "train-embedding")
    assert options["steps"] == 77 and notes == ["an_old_option (not an option of train-embedding here)"]
    with pytest.raises(ConfigFileError, match="for scal-sdt train-embedding, not train-lora"):
        past_options(tmp_path / "run" / "config.toml", EmbeddingConfig, "train-lora")
    with pytest.raises(ConfigFileError, match="no config.toml"):
        past_options(tmp_path, EmbeddingConfig)


def test_without_tomli_w_a_run_writes_its_options_as_json(tmp_path, monkeypatch):
    """A WebUI whose install.py could not install tomli-w (offline) still trains; the run's options go to
    config.json, which --config and a form's Load settings read as well."""
    import json
    import sys

    from scal_sdt.config_files import past_options
    from scal_sdt.textual_inversion.config import EmbeddingConfig

    monkeypatch.setitem(sys.modules, "tomli_w", None)  # import tomli_w raises ImportError
    data = make_concept_folder(tmp_path / "data", count=2, size=32)
    assert cli.main(["train-embedding", "--model", "tiny-sd1", "--data", str(data), "--resolution", "32", "--name",
                     "nojson", "--steps", "1", "--seed", "3", "--out", str(tmp_path / "a"), "--log-dir",
                     str(tmp_path / "run"), "--save-every", "0", "--preview-every", "0"]) == 0
    assert not (tmp_path / "run" / "config.toml").exists()
    options = json.loads((tmp_path / "run" / "config.json").read_text())
    assert options["seed"] == 3 and options["command"] == "train-embedding"
    refilled, _ = past_options(tmp_path / "run", EmbeddingConfig, "train-embedding")
    assert refilled["seed"] == 3 and refilled["name"] == "nojson"
