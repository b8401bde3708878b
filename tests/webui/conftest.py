"""Fixtures that run a REAL AUTOMATIC1111 WebUI (e.g. v1.8.0) as a server, offline on the CPU, for end-to-end tests.

Needs ``WEBUI_DIR`` (a WebUI folder with ``launch.py``) and ``WEBUI_PYTHON`` (its venv's python); every test that
uses :func:`webui_install` (and so every server fixture) is skipped with the reason otherwise.

    WEBUI_DIR=/work/webui WEBUI_PYTHON=/work/webui-venv/bin/python python -m pytest tests/webui -q

Reuse (fixtures, all session-scoped):

* ``tiny_checkpoint(name)`` -> Path: ``build_tiny(name)`` ("tiny-sd1" | "tiny-sd2" | "tiny-sdxl") written once by
  our ``save_checkpoint`` (with its yaml and text-encoder files) into a temporary ``models/Stable-diffusion`` folder
  shared by the session (``tiny_checkpoint.folder``).
* ``webui_server(ckpt=None, extra_args=(), extensions=(), settings=None, env=None, wait_model=True,
  name=None)`` -> :class:`WebUIServer`: starts the WebUI from WEBUI_DIR with WEBUI_PYTHON on a free 127.0.0.1 port,
  with its own ``--data-dir`` (nothing is written into WEBUI_DIR), ``--ckpt-dir`` = the session's model folder,
  ``--ckpt`` = ``ckpt``, ``--api`` and the offline CPU flags (:data:`BASE_ARGS`); waits for ``Startup time:`` and
  then for the model to load. ``extra_args`` are appended (``--medvram``, ``--api-auth user:pw`` …);
  ``extensions`` are folders symlinked into ``<data-dir>/extensions/`` (their ``install.py`` is NOT run, so what
  they import must already be in WEBUI_PYTHON's venv); ``settings`` (merged over :data:`DEFAULT_SETTINGS`) are
  written to ``<data-dir>/config.json`` first. The same arguments give the same (already running) server for the
  whole session; every server's process group is killed at the end of the session.
* ``webui`` -> the WebUI serving tiny-sd1.
* ``toy_server`` -> the WebUI serving the toy checkpoint with this extension (one process for every module that
  asks); ``reds`` -> the name of an aesthetic embedding of red pictures made on it through our API.

A :class:`WebUIServer` has ``base_url``, ``port``, ``data_dir``, ``ckpt_dir``, ``log_path``, ``log`` (the log text
so far), ``args``, ``get(path)``, ``post(path, payload)``, ``txt2img(**payload)`` and ``stop()``.
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 180  # launch -> "Startup time:" (about 6-9 s on a CPU box)
MODEL_TIMEOUT_S = 180  # "Startup time:" -> the checkpoint is loaded (a tiny one: about 1.5-5 s)
STOP_TIMEOUT_S = 15
BASE_ARGS = ("--skip-prepare-environment", "--skip-install", "--use-cpu", "all", "--no-half", "--precision", "full",
             "--skip-torch-cuda-test", "--do-not-download-clip", "--no-download-sd-model", "--server-name", "127.0.0.1",
             "--api")
# Written to <data-dir>/config.json unless a test overrides them:
# - live previews off: with "Approx NN" previews an SDXL model makes txt2img download vaeapprox-sdxl.pt (offline: an
#   error); SD1's model.pt ships with the WebUI.
# - emphasis "No norm": the default "Original" emphasis rescales the text conditioning by mean_before / mean_after.
#   An untrained tiny text encoder's final LayerNorm (weight 1, bias 0) gives conditioning whose mean is ~0 and can
#   be exactly 0.0 (seen with tiny-sd2 and "a red square") -> 0/0 -> NaN -> "A tensor with all NaNs was produced in
#   Unet". Real models never hit this; pass settings={"emphasis": "Original"} to test the stock path.
DEFAULT_SETTINGS = {"live_previews_enable": False, "emphasis": "No norm"}
# Environment variables of ours that must not leak into the WebUI's python (or its own argument parsing)
DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "COMMANDLINE_ARGS", "PYTHONSTARTUP")


def webui_paths() -> tuple[Path, Path] | str:
    """(WEBUI_DIR, WEBUI_PYTHON), or why they are not usable."""
    d, py = os.environ.get("WEBUI_DIR"), os.environ.get("WEBUI_PYTHON")
    if not d or not py:
        return "WEBUI_DIR and WEBUI_PYTHON are not set (a real AUTOMATIC1111 WebUI folder and its venv's python)"
    d_, py_ = Path(d), Path(py)
    if not (d_ / "launch.py").is_file() or not (d_ / "modules" / "sd_models.py").is_file():
        return f"WEBUI_DIR={d} is not a WebUI folder (no launch.py / modules/sd_models.py)"
    if not (py_.is_file() and os.access(py_, os.X_OK)):
        return f"WEBUI_PYTHON={py} is not an executable file"
    return d_, py_


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUIError(RuntimeError):
    pass


@dataclasses.dataclass
class WebUIServer:
    base_url: str
    port: int
    data_dir: Path
    ckpt_dir: Path
    ckpt: Path | None
    log_path: Path
    args: list[str]
    process: subprocess.Popen
    startup_s: float = 0.0  # launch -> "Startup time:"
    model_s: float = 0.0  # "Startup time:" -> model loaded

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""

    def auth_headers(self) -> dict:
        """Basic-auth headers for the first ``--api-auth`` user, if the server was started with one."""
        if "--api-auth" not in self.args:
            return {}
        user_pw = self.args[self.args.index("--api-auth") + 1].split(",")[0]
        return {"Authorization": "Basic " + base64.b64encode(user_pw.encode()).decode()}

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.splitlines()[-n:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, method: str, path: str, payload=None, timeout: float = 120, headers: dict | None = None):
        """JSON in, JSON out; an HTTP error raises :class:`WebUIError` with the status and body."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise WebUIError(f"{method} {path}: HTTP {e.code}: {e.read()[:2000]!r}") from None
        return json.loads(body) if body else None

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, payload=None, **kw):
        return self.request("POST", path, {} if payload is None else payload, **kw)

    def wait_job(self, job: dict, timeout: float = 120, headers: dict | None = None) -> dict:
        """Poll one of our API jobs (``{"id", "status", ...}``) until it has ended; the last state."""
        deadline = time.monotonic() + timeout
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job did not end in {timeout} s: {job}"
            time.sleep(0.3)
            job = self.get(f"/scal-sdt/v1/jobs/{job['id']}", headers=headers)
        return job

    def txt2img(self, **payload) -> tuple[list[bytes], dict]:
        """POST /sdapi/v1/txt2img (64x64, 4 Euler steps, seed 1, unless given): (PNG bytes per image, info dict)."""
        payload = {"width": 64, "height": 64, "steps": 4, "seed": 1, "sampler_name": "Euler", "batch_size": 1,
                   **payload}
        r = self.post("/sdapi/v1/txt2img", payload, timeout=300)
        info = r.get("info")
        return [base64.b64decode(im.split(",", 1)[-1]) for im in r["images"]], (json.loads(info) if info else {})

    def stop(self) -> None:
        """Kill the server's whole process group (it was started in its own session)."""
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
                return


def _wait_started(server: WebUIServer, deadline: float) -> None:
    while "Startup time:" not in server.log:
        if not server.alive():
            raise WebUIError(f"the WebUI exited (code {server.process.returncode}) before start-up; log tail:\n"
                             f"{server.log_tail()}")
        if time.monotonic() > deadline:
            raise WebUIError(f"no 'Startup time:' within {START_TIMEOUT_S} s; log tail:\n{server.log_tail()}")
        time.sleep(0.25)


def _wait_model(server: WebUIServer, deadline: float) -> None:
    """Until the checkpoint is the loaded one: the log says so and ``/sdapi/v1/options`` names it."""
    stem = server.ckpt.stem if server.ckpt else None
    while True:
        log = server.log
        if "Stable diffusion model failed to load" in log:
            raise WebUIError(f"the WebUI could not load {server.ckpt}; log tail:\n{server.log_tail()}")
        if not server.alive():
            raise WebUIError(f"the WebUI exited (code {server.process.returncode}); log tail:\n{server.log_tail()}")
        if "Model loaded in" in log:
            with contextlib.suppress(WebUIError, OSError, ValueError):
                current = server.get("/sdapi/v1/options", timeout=10, headers=server.auth_headers()
                                     ).get("sd_model_checkpoint") or ""
                if stem is None or current.startswith(stem):
                    return
        if time.monotonic() > deadline:
            raise WebUIError(f"the model was not loaded within {MODEL_TIMEOUT_S} s; log tail:\n{server.log_tail()}")
        time.sleep(0.25)


def start_webui(webui_dir: Path, python: Path, root: Path, ckpt_dir: Path, ckpt: Path | None = None,
                extra_args=(), extensions=(), settings: dict | None = None, env: dict | None = None,
                wait_model: bool = True, base_args: tuple[str, ...] = BASE_ARGS) -> WebUIServer:
    """Start one WebUI server under ``root`` (its data dir and log) and wait until it is usable (``base_args``:
    the offline CPU flags of A1111, or Forge's)."""
    data_dir = root / "data"
    (data_dir / "extensions").mkdir(parents=True, exist_ok=True)
    for ext in extensions:
        ext = Path(ext).absolute()
        link = data_dir / "extensions" / ext.name
        if not link.exists():
            link.symlink_to(ext, target_is_directory=True)
    config = {**DEFAULT_SETTINGS, **(settings or {})}
    (data_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    port = free_port()
    args = [*base_args, "--port", str(port), "--data-dir", str(data_dir), "--ckpt-dir", str(ckpt_dir)]
    if ckpt is not None:
        args += ["--ckpt", str(Path(ckpt).absolute())]
    args += [str(a) for a in extra_args]
    run_env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    run_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    log_path = root / "webui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(python), "launch.py", *args], cwd=webui_dir, env=run_env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = WebUIServer(f"http://127.0.0.1:{port}", port, data_dir, ckpt_dir, ckpt and Path(ckpt).absolute(),
                         log_path, args, process)
    atexit.register(server.stop)  # a second line of defence; the fixtures stop their servers at teardown
    try:
        t0 = time.monotonic()
        _wait_started(server, t0 + START_TIMEOUT_S)
        server.startup_s = time.monotonic() - t0
        if wait_model and ckpt is not None:
            t1 = time.monotonic()
            _wait_model(server, t1 + MODEL_TIMEOUT_S)
            server.model_s = time.monotonic() - t1
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def webui_install() -> tuple[Path, Path]:
    """(WEBUI_DIR, WEBUI_PYTHON); skips the test when they are not set or not usable."""
    paths = webui_paths()
    if isinstance(paths, str):
        pytest.skip(paths)
    return paths


def webui_dir_files(webui_dir: Path) -> dict[str, int]:
    """{relative path: mtime_ns} of WEBUI_DIR's files, without repositories/, .git/ and __pycache__/."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(webui_dir):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")
                       and not (Path(dirpath) == webui_dir and d in ("repositories", "venv"))]
        for f in filenames:
            path = Path(dirpath) / f
            with contextlib.suppress(OSError):
                files[str(path.relative_to(webui_dir))] = path.stat().st_mtime_ns
    return files


@pytest.fixture(scope="session")
def webui_dir_snapshot(webui_install) -> dict[str, int]:
    """WEBUI_DIR's files before any server of this session started (see :func:`webui_dir_files`)."""
    return webui_dir_files(webui_install[0])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(name)``: tiny-sd1/sd2/sdxl or the trained toy model saved (once) by our ``save_checkpoint`` into the session's
    ``models/Stable-diffusion`` folder (``tiny_checkpoint.folder``), with the yaml and text-encoder files."""
    folder = tmp_path_factory.mktemp("webui-models") / "Stable-diffusion"
    folder.mkdir()
    made = {}

    def get(name: str = "tiny-sd1") -> Path:
        if name not in made:
            from scal_sdt.host.checkpoint import save_checkpoint
            from scal_sdt.host.standalone import load_components

            made[name] = save_checkpoint(load_components(name), folder / f"{name}.safetensors")
        return made[name]

    get.folder = folder
    return get


@pytest.fixture(scope="session")
def webui_server(webui_install, webui_dir_snapshot, tiny_checkpoint, tmp_path_factory):
    """Factory: ``webui_server(ckpt=None, extra_args=(), extensions=(), settings=None, env=None, wait_model=True,
    name=None)`` -> a running :class:`WebUIServer` (shared for equal arguments; all killed at session end)."""
    webui_dir, python = webui_install
    servers: dict[tuple, WebUIServer] = {}

    def start(ckpt=None, extra_args=(), extensions=(), settings=None, env=None, wait_model=True, name=None):
        key = (str(ckpt), tuple(map(str, extra_args)), tuple(map(str, extensions)),
               json.dumps(settings or {}, sort_keys=True), json.dumps(env or {}, sort_keys=True), wait_model)
        server = servers.get(key)
        if server is not None and server.alive():
            return server
        root = tmp_path_factory.mktemp(name or f"webui-{Path(str(ckpt)).stem if ckpt else 'nomodel'}")
        try:
            server = start_webui(webui_dir, python, root, tiny_checkpoint.folder, ckpt, extra_args, extensions,
                                 settings, env, wait_model)
        except WebUIError as e:
            pytest.fail(str(e))
        servers[key] = server
        return server

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def webui(webui_server, tiny_checkpoint) -> WebUIServer:
    """The WebUI serving our tiny-sd1 checkpoint (loaded)."""
    return webui_server(tiny_checkpoint("tiny-sd1"), name="webui-tiny-sd1")


@pytest.fixture(scope="session")
def toy_server(webui_server, tiny_checkpoint) -> WebUIServer:
    """The WebUI serving the toy checkpoint with this extension (the tests of evaluate, aesthetic gradients …)."""
    return webui_server(tiny_checkpoint("toy"), extensions=[Path(__file__).resolve().parents[2]],
                        name="webui-scal-sdt-toy")


@pytest.fixture(scope="session")
def reds(toy_server, tmp_path_factory) -> str:
    """An aesthetic embedding of red pictures, made on :func:`toy_server` by POST /scal-sdt/v1/aesthetic-embedding."""
    from scal_sdt.toy_world.world import Scene, render

    folder = tmp_path_factory.mktemp("reds")
    for i, shape in enumerate(["circle", "square", "star", "triangle"]):
        render(Scene(shape, "red", "white", "large", (0.5, 0.5))).save(folder / f"{i}.png")
    job = toy_server.post("/scal-sdt/v1/aesthetic-embedding", {"images": str(folder), "name": "reds", "clip": "toy",
                                                               "overwrite": True})
    job = toy_server.wait_job(job)
    assert job["status"] == "finished", job
    out = toy_server.data_dir / "models" / "aesthetic_embeddings"
    assert {p.name for p in out.iterdir()} >= {"reds.pt", "reds.safetensors", "reds.preview.png"}
    return "reds"
