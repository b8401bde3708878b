"""Crash-proof training checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNNN`` holding ``state.pt`` and a completion marker ``COMPLETE``
(JSON: step, time, size and sha256 of every file). It is written under a temporary name, fsynced, marked complete
and only then renamed into place, so a crash (even ``kill -9``) leaves either the old set of checkpoints or the new
one, never a half-written checkpoint that counts. On resume, folders without a valid marker are skipped with a
message. Rotation keeps the newest ``keep_last`` plus the ones marked ``keep`` (a backup, or one every N minutes).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import mention, turn_on

MARKER = "COMPLETE"
STATE = "state.pt"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    pass


@dataclass
class Checkpoint:
    path: Path
    step: int
    time: float
    keep: bool


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """A binary file that torch.save writes into (it writes front to back), hashing and counting the bytes."""

    def __init__(self, f):
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def state_bytes(state) -> int:
    """The tensor bytes in ``state`` (nested dicts, lists and tuples; each storage counted once): about what
    torch.save writes."""
    seen, total, todo = set(), 0, [state]
    while todo:
        x = todo.pop()
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = (x.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
    return total


class CheckpointStore:
    def __init__(self, run_dir: Path, keep_last: int = 3, keep_every_minutes: float = 0.0, report=print):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last, self.keep_every_minutes, self.report = keep_last, keep_every_minutes, report
        self._last_kept_time: float | None = None

    # -- writing ----------------------------------------------------------------------------------------------
    def save(self, step: int, state: dict, keep: bool = False) -> Path:
        """Write a checkpoint; raises :class:`CheckpointError` (naming sizes) when the disk cannot hold it,
        leaving every earlier checkpoint untouched. The state is serialized straight into the file (hashed as it
        goes), never into memory first: a full fine-tune's state (SD1's UNet and its optimizer: 5 GB) would
        otherwise be held twice at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        need = state_bytes(state) + (1 << 20)
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise CheckpointError(f"not enough free disk to save the checkpoint of step {step}: it needs "
                                  f"{need / 2**20:.1f} MB, {self.root} has {free / 2**20:.1f} MB free. The previous "
                                  f"checkpoint is kept; free some space and resume ({turn_on('resume')}).")
        now = time.time()
        if self.keep_every_minutes and (self._last_kept_time is None
                                        or now - self._last_kept_time >= self.keep_every_minutes * 60):
            keep, self._last_kept_time = True, now
        final = self.root / f"{PREFIX}{step:07d}"
        tmp = self.root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            with open(tmp / STATE, "wb") as f:
                out = _HashingWriter(f)
                torch.save(state, out)  # our own resume state, read back with weights_only=True; never a WebUI file
                f.flush()
                os.fsync(f.fileno())
            marker = {"step": step, "time": now, "keep": keep,
                      "files": {STATE: {"size": out.size, "sha256": out.digest.hexdigest()}}}
            with open(tmp / MARKER, "w") as f:
                json.dump(marker, f)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"could not save the checkpoint of step {step} in {self.root}: {e}. The previous "
                                  f"checkpoint is kept.") from e
        self._rotate()
        return final

    def _rotate(self) -> None:
        done = self.complete()
        rolling = [c for c in done if not c.keep]
        for old in rolling[:-self.keep_last] if self.keep_last > 0 else []:
            shutil.rmtree(old.path, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------------------
    def _read_marker(self, folder: Path) -> Checkpoint | None:
        try:
            marker = json.loads((folder / MARKER).read_text())
            for name, info in marker["files"].items():
                if (folder / name).stat().st_size != info["size"]:
                    return None
            return Checkpoint(folder, int(marker["step"]), float(marker["time"]), bool(marker.get("keep")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def complete(self) -> list[Checkpoint]:
        """Checkpoints with a valid completion marker, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if folder.is_dir() and folder.name.startswith(PREFIX):
                ckpt = self._read_marker(folder)
                if ckpt is not None:
                    found.append(ckpt)
        return sorted(found, key=lambda c: c.step)

    def load_latest(self) -> tuple[Checkpoint, dict]:
        """The newest checkpoint that is complete and intact; incomplete or damaged ones are skipped and named."""
        if self.root.is_dir():
            for leftover in self.root.glob(f".{PREFIX}*.tmp-*"):
                self.report(f"skipped an unfinished checkpoint save: {leftover.name} (removed)")
                shutil.rmtree(leftover, ignore_errors=True)
            for folder in self.root.iterdir():
                if folder.is_dir() and folder.name.startswith(PREFIX) and self._read_marker(folder) is None:
                    self.report(f"skipped checkpoint {folder.name}: it has no valid completion marker")
        for ckpt in reversed(self.complete()):
            marker = json.loads((ckpt.path / MARKER).read_text())
            if _sha256(ckpt.path / STATE) != marker["files"][STATE]["sha256"]:
                self.report(f"skipped checkpoint {ckpt.path.name}: its state file is damaged (checksum differs)")
                continue
            try:
                state = torch.load(ckpt.path / STATE, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never half-loaded
                self.report(f"skipped checkpoint {ckpt.path.name}: cannot read it ({e})")
                continue
            return ckpt, state
        raise FileNotFoundError(f"nothing to resume in {self.root}: no complete checkpoint (train once without "
                                f"{mention('resume')} first, with {mention('save_every')} N to keep checkpoints)")
