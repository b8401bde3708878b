"""install.py adds only what is missing, never touches the WebUI's own packages, never fails the start."""
import runpy
import types
from pathlib import Path

INSTALL = Path(__file__).resolve().parents[1] / "install.py"


def load_install():
    return runpy.run_path(str(INSTALL), run_name="__scal_sdt_test__")


def fake_launch(installed, fail=False):
    calls = []

    def run_pip(command, desc=None):
        calls.append(command)
        if fail:
            raise RuntimeError("no network")

    return types.SimpleNamespace(is_installed=lambda name: name in installed, run_pip=run_pip), calls


def test_installs_only_missing_and_pins_the_webuis_packages(monkeypatch):
    mod = load_install()
    present = {"safetensors", "matplotlib", "tqdm", "yaml", "onnxruntime", "cv2", "lycoris"}
    monkeypatch.setitem(mod["install"].__globals__, "_is_installed", lambda launch, m: m in present)
    captured = {}

    def run_pip(command, desc=None):
        path = command.split('-c "')[1].rstrip('"')
        captured[command] = Path(path).read_text()

    launch = types.SimpleNamespace(is_installed=lambda m: False, run_pip=run_pip)
    done = mod["install"](launch)
    assert done == ["open_clip_torch>=2.20"]
    (command, constraints), = captured.items()
    for protected in ("torch", "torchvision", "gradio", "transformers", "numpy"):
        assert f'"{protected}' not in command
    assert "torch==" in constraints and "numpy==" in constraints  # pip may not move them
    assert "protobuf" in mod["PROTECTED"]  # A1111 pins protobuf 3.20; a new onnxruntime would pull 7.x


def test_a_failed_install_never_raises(monkeypatch, capsys):
    mod = load_install()
    monkeypatch.setitem(mod["install"].__globals__, "_is_installed", lambda launch, m: False)
    launch, calls = fake_launch(set(), fail=True)
    assert mod["install"](launch) == []
    assert len(calls) == len(mod["REQUIREMENTS"])
    assert "could not install" in capsys.readouterr().err


def test_nothing_missing_means_no_pip_call(monkeypatch):
    mod = load_install()
    monkeypatch.setitem(mod["install"].__globals__, "_is_installed", lambda launch, m: True)
    launch, calls = fake_launch(set())
    assert mod["install"](launch) == [] and calls == []


def test_requirements_never_name_the_webuis_packages():
    mod = load_install()
    names = " ".join(req for _, req in mod["REQUIREMENTS"])
    for protected in ("torch", "gradio", "transformers", "numpy"):
        assert not any(req.split(">")[0].split("=")[0] == protected for _, req in mod["REQUIREMENTS"]), names
