"""install.py adds only what is missing, never touches the WebUI's own packages, never fails the start."""
import runpy
import types
from pathlib import Path

INSTALL = Path(__file__).resolve().parents[1] / "install.py"


def load_install(onnxruntime=("onnxruntime",), cuda=None):
    """install.py's namespace, seeing ``onnxruntime`` distributions installed and a torch built for ``cuda``."""
    mod = runpy.run_path(str(INSTALL), run_name="__scal_sdt_test__")
    mod["install"].__globals__["_onnxruntime_dists"] = lambda: set(onnxruntime)
    mod["install"].__globals__["_torch_cuda_major"] = lambda: cuda
    return mod


def fake_launch(installed, fail=False):
    calls = []

    def run_pip(command, desc=None):
        calls.append(command)
        if fail:
            raise RuntimeError("no network")

    return types.SimpleNamespace(is_installed=lambda name: name in installed, run_pip=run_pip), calls


def test_installs_only_missing_and_pins_the_webuis_packages(monkeypatch):
    mod = load_install()
    present = {"safetensors", "matplotlib", "tqdm", "yaml", "cv2", "pytorch_optimizer", "lycoris", "tomli_w", "tomli"}
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


def test_onnxruntime_matches_the_webuis_cuda_and_never_both():
    plan = load_install()["onnxruntime_plan"]
    assert plan(12, set()) == (None, "onnxruntime-gpu>=1.19")
    assert plan(12, {"onnxruntime"}) == ("onnxruntime", "onnxruntime-gpu>=1.19")  # the CPU build makes way
    assert plan(12, {"onnxruntime-gpu"}) == (None, None)
    assert plan(11, set()) == (None, "onnxruntime-gpu>=1.16,<1.19")  # 1.18 was the last CUDA 11.8 build
    assert plan(None, set()) == (None, "onnxruntime>=1.16")
    assert plan(None, {"onnxruntime-gpu"}) == (None, None)
    assert plan(13, set()) == (None, "onnxruntime>=1.16")  # no CUDA 13 build on PyPI


def test_a_cuda_webui_gets_onnxruntime_gpu_after_the_cpu_build_is_removed(monkeypatch):
    mod = load_install(onnxruntime=("onnxruntime",), cuda=12)
    monkeypatch.setitem(mod["install"].__globals__, "_is_installed", lambda launch, m: True)
    launch, calls = fake_launch(set())
    assert mod["install"](launch) == ["onnxruntime-gpu>=1.19"]
    assert calls[0] == "uninstall -y onnxruntime" and calls[1].startswith('install "onnxruntime-gpu>=1.19" -c ')
    assert len(calls) == 2
