"""The command line is generated from the configs: every field is a flag with its default and help."""
import dataclasses
import subprocess
import sys

import pytest

from scal_sdt import cli
from scal_sdt.config import flag_name
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.format import load_embedding


def help_text(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command].format_help()


def test_train_embedding_help_lists_every_field_with_its_default():
    text = help_text("train-embedding")
    for f in dataclasses.fields(EmbeddingConfig):
        assert flag_name(f) in text, f.name
        if f.default is not dataclasses.MISSING and f.metadata.get("help"):
            assert f"(default: {f.default!r})" in " ".join(text.split()), f.name
    for flag in ("--model", "--data", "--name", "--vectors", "--init-text", "--steps", "--lr", "--batch-size", "--out",
                 "--resume", "--memory-mode", "--save-every", "--format"):
        assert flag in text


def test_console_script_runs_and_trains(tmp_path):
    out = tmp_path / "emb"
    code = cli.main(["train-embedding", "--model", "tiny-sd1", "--data", "demo", "--name", "clitest", "--steps", "3",
                     "--out", str(out), "--log-dir", str(tmp_path / "run"), "--preview-every", "3",
                     "--preview-steps", "2", "--format", "pt"])
    assert code == 0
    emb = load_embedding(out / "clitest.pt")
    assert emb.name == "clitest" and emb.step == 3
    assert (tmp_path / "run" / "loss.png").exists() and (tmp_path / "run" / "images" / "clitest-3.png").exists()


def test_errors_are_one_clear_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["train-embedding", "--name", "x", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "scal_sdt.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train-embedding" in proc.stdout and "create-embedding" in proc.stdout


@pytest.mark.parametrize("bad", [["--vectors", "0"], ["--lr", "fast"]])
def test_bad_values_are_refused_naming_the_option(tmp_path, capsys, bad):
    assert cli.main(["train-embedding", "--name", "x", "--data", "demo", "--out", str(tmp_path), *bad]) == 2
    assert bad[0].lstrip("-") in capsys.readouterr().err


def test_a_value_outside_the_choices_is_refused_by_the_parser(tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train-embedding", "--name", "x", "--precision", "fp8"])
    assert exc.value.code == 2


def test_a_preset_fills_in_only_what_the_user_did_not_give(tmp_path, capsys):
    code = cli.main(["train-embedding", "--model", "tiny-sd1", "--data", "demo", "--name", "presetted", "--steps", "1",
                     "--out", str(tmp_path / "emb"), "--log-dir", str(tmp_path / "run"), "--preview-every", "0",
                     "--preset", "6gb", "--batch-size", "2"])
    assert code == 0
    out = capsys.readouterr().out
    # 6gb for SD1: batch 1 x 4, checkpointing, medvram; the user's batch 2 wins; precision stays fp32 on the CPU
    assert "preset 6gb for sd1: batch 2 x 4, auto, memory medvram, checkpointing True" in out


def test_given_options_reads_the_command_line():
    given = cli.given_options(EmbeddingConfig, ["--name", "x", "--batch-size=2", "--no-flip", "--lr", "1"])
    assert given == {"name", "batch_size", "flip", "lr"}
