"""Steering a run while it trains: "sample", "save", "backup", "stop" (after the current step).

Three ways in, all read by the loop once per step:
- a control file ``RUN_DIR/control`` holding the words (``scal-sdt control RUN_DIR sample``, or ``echo save >``);
- signals on POSIX: SIGUSR1 = save now, SIGUSR2 = sample now (the command line installs them);
- :func:`request` from the same process (the buttons of the WebUI tab and the standalone page).
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from ..config import check_bounds, option

REQUESTS = ("sample", "save", "backup", "stop")
CONTROL_FILE = "control"



@dataclass(kw_only=True)
class ControlConfig:
    run_dir: str = option(help="the run's log folder (scal-sdt-runs/NAME by default)", positional=True)
    request: str = option(help="what to do after the current step", choices=REQUESTS, positional=True)

    def __post_init__(self):
        check_bounds(self)


_pending: dict[str, set[str]] = {}
_lock = threading.Lock()
_signalled: set[str] = set()


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).resolve())


def request(run_dir: Path, what: str) -> None:
    """Ask the run training in ``run_dir`` (in this process) to do ``what`` after its current step."""
    if what not in REQUESTS:
        raise ValueError(f"unknown request {what!r}; one of {', '.join(REQUESTS)}")
    with _lock:
        _pending.setdefault(_key(run_dir), set()).add(what)


def write_request(run_dir: Path, what: str) -> Path:
    """Ask a run in another process, through its control file."""
    if what not in REQUESTS:
        raise ValueError(f"unknown request {what!r}; one of {', '.join(REQUESTS)}")
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"no run folder {run_dir}; give the run's log folder (scal-sdt-runs/NAME by default)")
    path = Path(run_dir) / CONTROL_FILE
    with open(path, "a") as f:
        f.write(what + "\n")
    return path


def install_signal_handlers() -> None:
    """SIGUSR1 → save, SIGUSR2 → sample (POSIX, main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return
    signal.signal(signal.SIGUSR1, lambda *_: _signalled.add("save"))
    signal.signal(signal.SIGUSR2, lambda *_: _signalled.add("sample"))


class ControlChannel:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.key = _key(run_dir)

    def poll(self) -> set[str]:
        """The requests that arrived since the last poll; unknown words in the file are reported back as such."""
        with _lock:
            got = _pending.pop(self.key, set())
        got |= _signalled
        _signalled.clear()
        path = self.run_dir / CONTROL_FILE
        if path.exists():
            taken = path.with_name(f".{CONTROL_FILE}.{os.getpid()}")
            try:
                os.replace(path, taken)
                words = taken.read_bytes().decode("utf-8", errors="replace").split()  # a torn write reads
                taken.unlink()
            except OSError:
                words = []
            got |= {w if w in REQUESTS else f"unknown:{w}" for w in words}
        return got
