"""Every sub-command with the bad inputs users make: one clear line on stderr, a non-zero exit, no traceback, and
nothing written where the result would go."""
import pytest

from scal_sdt import cli


@pytest.fixture()
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path


TRAIN = ["--model", "tiny-sd1", "--steps", "1", "--out", "out"]
CASES = [
    # (argv, a fragment of the one line the user reads)
    (["train-embedding", "--data", "missing", "--name", "x", *TRAIN], "does not exist"),
    (["train-embedding", "--data", "empty", "--name", "x", *TRAIN], "no usable image"),
    (["train-embedding", "--data", "demo", "--name", "x", "--model", "model.txt", "--steps", "1"], "unsupported format"),
    (["train-embedding", "--data", "demo", "--name", "../evil", *TRAIN], "path characters"),
    (["train-embedding", "--data", "demo", "--name", "a/b", *TRAIN], "path characters"),
    (["train-embedding", "--data", "demo", "--name", "x", *TRAIN, "--steps", "-1"], "steps must be"),
    (["train-embedding", "--data", "demo", "--name", "x", *TRAIN, "--lr", "abc"], "learning rate"),
    (["train-embedding", "--data", "demo", "--name", "x", *TRAIN, "--resolution", "abc"], "invalid int value"),
    (["train-hypernetwork", "--data", "demo", "--name", "..", *TRAIN], "path characters"),
    (["train-hypernetwork", "--data", "demo", "--name", "x", *TRAIN, "--lr", "-3"], "must be ≥ 0"),
    (["dreambooth", "--data", "demo", "--name", "../x", *TRAIN], "path characters"),
    (["dreambooth", "--data", "missing", "--name", "x", *TRAIN], "does not exist"),
    (["tag", "missing", "--model", "toy"], "does not exist"),
    (["clean", "missing", "--duplicates"], "does not exist"),
    (["make-aesthetic-embedding", "--images", "missing", "--name", "x"], "does not exist"),
    (["make-aesthetic-embedding", "--images", "empty", "--name", "x"], "no readable images"),
    (["create-embedding", "--name", "../x"], "path characters"),
    (["create-embedding", "--name", "x", "--vectors", "0"], "vectors must be"),
    (["create-embedding", "--name", "x", "--model", "model.txt"], "unsupported format"),
    (["generate", "--prompt", "x", "--n", "-1"], "n must be"),
    (["generate", "--prompt", "x", "--model", "model.txt"], "unsupported format"),
    (["generate", "--prompt", "x", "--embeddings", "missing"], "does not exist"),
    (["generate", "--prompt", "x", "--lora", "missing.safetensors"], "does not exist"),
    (["generate", "--prompt", "x", "--model", "tiny-sd1", "--lora", "model.txt", "--steps", "1", "--n", "1"], ""),
    (["save-checkpoint", "--model", "model.txt", "--out", "o.safetensors"], "unsupported format"),
    (["control", "missing", "save"], "no run folder"),
    (["control", "out", "explode"], "invalid choice"),
    (["audit", "missing"], "does not exist"),
    (["audit", "empty", "--out", "empty/reports"], "inside the data set folder"),
    (["audit", "empty", "--method", "magic"], "invalid choice"),
    (["evaluate", "empty"], "run.json"),
    (["evaluate", "empty", "--strengths", "strong"], "comma-separated numbers"),
    (["evaluate", "empty", "--keep", "best"], "keep 'best'"),
    (["evaluate", "empty", "--aesthetic-weights", "0,2"], "between 0 and 1"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a[:4]) for a, _ in CASES])
def test_bad_input_gets_one_clear_line(world, capsys, argv, fragment):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusal: usage, then one error line
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None)
    assert err, "no message"
    last = err[-1]
    assert "Traceback" not in "\n".join(err)
    assert last.startswith(f"scal-sdt {argv[0]}: error:"), last
    assert fragment in last, last
    assert not any((world / "out").iterdir()), "something was written for a refused run"
    assert not (world / "outputs").exists() or not any((world / "outputs").iterdir())
