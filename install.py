"""Run by the WebUI at start-up (and after an install from the Extensions tab) in its own Python.

Installs only what the WebUI does not already have. It never installs, upgrades or downgrades torch, torchvision,
gradio, transformers, numpy or protobuf: those belong to the WebUI, and pip is held to the versions already there.
A failure is reported and never stops the WebUI from starting.
"""
import os
import sys
import tempfile

# (import name, pip requirement) of what the extension needs beyond a stock WebUI. Not diffusers: inside the WebUI
# training uses the WebUI's own model (A1111) or Forge's bundled diffusers, and a new diffusers could pull a
# huggingface_hub that the WebUI's pinned transformers cannot use.
REQUIREMENTS = [
    ("safetensors", "safetensors>=0.4"),
    ("open_clip", "open_clip_torch>=2.20"),
    ("matplotlib", "matplotlib>=3.7"),
    ("tqdm", "tqdm>=4.60"),
    ("yaml", "pyyaml>=6"),
    ("cv2", "opencv-python-headless>=4.8,<5"),  # dataset cleaning; skipped when the WebUI's opencv-python is there
    ("pytorch_optimizer", "pytorch-optimizer>=3.5"),  # Prodigy, Lion, D-Adaptation, CAME, schedule-free AdamW
    ("lycoris", "lycoris-lora>=4.0"),  # the LoRA trainer's adapters
    ("tomli_w", "tomli-w>=1.0"),  # config files: --save-config, each run's config.toml, the queue's jobs
] + ([("tomli", "tomli>=2.0")] if sys.version_info < (3, 11) else [])  # reading them on Python 3.10
PROTECTED = ("torch", "torchvision", "gradio", "transformers", "numpy", "huggingface_hub", "pydantic", "fastapi",
             "protobuf")  # protobuf: the WebUI pins 3.20; a new onnxruntime would pull 7.x


def _installed_version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _constraints_file():
    """A pip constraints file holding every protected package at the version the WebUI has."""
    pins = [f"{name}=={v}" for name in PROTECTED if (v := _installed_version(name))]
    fd, path = tempfile.mkstemp(prefix="scal-sdt-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(pins) + "\n")
    return path


def _is_installed(launch, module):
    try:
        import importlib.util

        return importlib.util.find_spec(module) is not None
    except Exception:
        return launch.is_installed(module)


#: onnxruntime-gpu on PyPI by CUDA major: 1.19 and later are built for CUDA 12, 1.18 was the last for CUDA 11.8.
#: PyPI has no build for CUDA 13 (only a nightly feed), so a CUDA 13 WebUI tags with the CPU package.
ONNXRUNTIME_GPU = {11: "onnxruntime-gpu>=1.16,<1.19", 12: "onnxruntime-gpu>=1.19"}
ONNXRUNTIME_CPU = "onnxruntime>=1.16"


def _torch_cuda_major():
    """The CUDA major version the WebUI's torch was built for, or None (a CPU, ROCm or MPS build)."""
    try:
        import torch

        return int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None
    except Exception:
        return None


def onnxruntime_plan(cuda_major, installed):
    """(package to remove, requirement to install) for the taggers' runtime: the GPU build matching the WebUI's
    CUDA, the CPU build elsewhere, never both (they share the module name and shadow each other). ``installed``
    is the set of distributions present."""
    want = ONNXRUNTIME_GPU.get(cuda_major, ONNXRUNTIME_CPU)
    gpu = want != ONNXRUNTIME_CPU
    if gpu and "onnxruntime-gpu" in installed:
        return None, None
    if not gpu and installed & {"onnxruntime", "onnxruntime-gpu"}:
        return None, None  # a CPU WebUI keeps whatever onnxruntime it has
    return ("onnxruntime" if gpu and "onnxruntime" in installed else None), want


def _onnxruntime_dists():
    return {d for d in ("onnxruntime", "onnxruntime-gpu") if _installed_version(d)}


def _install_onnxruntime(launch, constraints):
    installed, cuda = _onnxruntime_dists(), _torch_cuda_major()
    remove, req = onnxruntime_plan(cuda, installed)
    if cuda and cuda not in ONNXRUNTIME_GPU and not installed:
        print(f"[SCAL-SDT] the WebUI's torch uses CUDA {cuda}, for which PyPI has no onnxruntime-gpu: the taggers "
              f"run on the CPU package", file=sys.stderr)
    if req is None:
        return None
    if remove:
        launch.run_pip(f"uninstall -y {remove}", "SCAL-SDT: the CPU onnxruntime makes way for onnxruntime-gpu")
    launch.run_pip(f'install "{req}" -c "{constraints}"', f"SCAL-SDT requirement: {req}")
    return req


def install(launch):
    missing = [(module, req) for module, req in REQUIREMENTS if not _is_installed(launch, module)]
    constraints = _constraints_file()
    done = []
    try:
        try:
            if ort := _install_onnxruntime(launch, constraints):
                done.append(ort)
        except Exception as e:  # never stop the WebUI from starting
            print(f"[SCAL-SDT] could not install onnxruntime: {e}\n[SCAL-SDT] the taggers will say so; to fix it "
                  f"run: {sys.executable} -m pip install onnxruntime", file=sys.stderr)
        for module, req in missing:
            try:
                launch.run_pip(f'install "{req}" -c "{constraints}"', f"SCAL-SDT requirement: {req}")
                done.append(req)
            except Exception as e:  # never stop the WebUI from starting
                print(f"[SCAL-SDT] could not install {req}: {e}\n[SCAL-SDT] the features that need it will say so; "
                      f"to fix it run: {sys.executable} -m pip install \"{req}\"", file=sys.stderr)
    finally:
        os.unlink(constraints)
    return done


if __name__ != "__scal_sdt_test__":
    try:
        import launch  # the WebUI puts its root on PYTHONPATH for install.py

        install(launch)
    except Exception as e:
        print(f"[SCAL-SDT] install.py: {e}", file=sys.stderr)
