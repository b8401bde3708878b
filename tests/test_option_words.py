"""A message names an option once, by its field; each face words it its own way: the flag on the command line,
the checkbox's label on the page and in the WebUI's tabs, the JSON key in the API."""
import pytest

from scal_sdt import cli
from scal_sdt.config import FACES, mention, speak, turn_on
from scal_sdt.jobs import Job
from scal_sdt.textual_inversion.config import EmbeddingConfig

ASKS = f"exists; choose another name, {turn_on('overwrite')} to replace it"


def test_each_face_words_an_option_its_own_way():
    text = (f"{ASKS}; try {mention('optimizer', 'adafactor')}, {mention('gradient_checkpointing', True)}, "
            f"{mention('fused_backward', False)} or a lower {mention('resolution')}")
    assert speak(text, "cli") == ("exists; choose another name, pass --overwrite to replace it; try --optimizer "
                                  "adafactor, --gradient-checkpointing, --no-fused-backward or a lower --resolution")
    assert speak(text, "page") == ("exists; choose another name, tick “overwrite” to replace it; try “optimizer” = "
                                   "adafactor, “gradient checkpointing” ticked, “fused backward” unticked or a lower "
                                   "“resolution”")
    assert speak(text, "api") == ('exists; choose another name, send "overwrite": true to replace it; try '
                                  '"optimizer": "adafactor", "gradient_checkpointing": true, "fused_backward": false '
                                  'or a lower "resolution"')
    assert speak(mention("lr", "0.005:100, 1e-3"), "cli") == "--lr '0.005:100, 1e-3'"  # pastes into a shell
    assert speak("no options here", "page") == "no options here"
    with pytest.raises(ValueError, match="face"):
        speak(text, "gui")


def test_no_face_leaks_another_faces_words():
    """No message the code raises says --flag on the page or names a checkbox on the command line."""
    for face in FACES:
        said = speak(ASKS, face)
        assert "⟦" not in said and ("--" in said) == (face == "cli") and ("“" in said) == (face == "page")


def test_training_twice_speaks_the_command_lines_and_the_pages_language(tmp_path, capsys):
    from scal_sdt.ui.form import error_html

    out = tmp_path / "emb"
    argv = ["train-embedding", "--model", "tiny-sd1", "--data", "demo", "--name", "twice", "--steps", "1",
            "--save-every", "0", "--preview-every", "0", "--out", str(out), "--log-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace it, or pass --resume" in err and "⟦" not in err
    from scal_sdt.textual_inversion.trainer import train_embedding

    with pytest.raises(FileExistsError) as refused:
        train_embedding(EmbeddingConfig(model="tiny-sd1", name="twice", data="demo", out=str(out)), None)
    page = error_html(refused.value)
    assert "tick “overwrite” to replace it, or tick “resume”" in page and "--" not in page


def test_the_api_and_the_forms_help_speak_their_own_language():
    from scal_sdt.config import describe
    from scal_sdt.generate.config import GenerateConfig

    job = Job(id="x", kind="train", messages=[f"resume ({turn_on('resume')})"], error=f"x {ASKS}")
    said = job.to_dict("api")
    assert said["messages"] == ['resume (send "resume": true)'] and '"overwrite": true' in said["error"]
    help_ = {d["name"]: d["help"] for d in describe(GenerateConfig)}
    assert 'from "embeddings" work' in help_["prompt"]
    assert "from --embeddings work" in cli.build_parser()._subparsers._group_actions[0].choices[
        "generate"].format_help().replace("\n", " ").replace("  ", " ")
