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
    ("onnxruntime", "onnxruntime>=1.16"),  # the taggers; skipped when onnxruntime-gpu (same module) is there
    ("cv2", "opencv-python-headless>=4.8,<5"),
    ("lycoris", "lycoris-lora>=4.0"),  # the LoRA trainer's adapters  # dataset cleaning; skipped when the WebUI's opencv-python is there
]
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


def install(launch):
    missing = [(module, req) for module, req in REQUIREMENTS if not _is_installed(launch, module)]
    if not missing:
        return []
    constraints = _constraints_file()
    done = []
    try:
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
