"""Writing files so that an interruption never leaves a half-written one behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it what an ordinary write would (or the replaced file's mode)
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else _new_file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_file_mode() -> int:
    """0o666 less the process's umask: what open() gives a new file (the umask read without changing it on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_webui_pt(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically in torch's legacy (non-zip) serialization: the WebUI's ``modules/safe.py`` refuses
    the records a modern torch's zip format adds, so every ``.pt`` a user loads in the WebUI is written this way."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, str(tmp), _use_new_zipfile_serialization=False)
    return Path(path)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as a ``.safetensors`` file atomically, with the header's keys in sorted order: the library
    orders metadata keys by a per-process hash, so the same weights would otherwise give different bytes (and
    sha256) from run to run."""
    import json
    import struct

    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data to 8 bytes
    atomic_write_bytes(path, struct.pack("<Q", len(header)) + header + raw[8 + n:])
    return Path(path)


#: config fields a job writes into (results, run folders, generated class images)
WRITTEN_FIELDS = ("out", "log_dir", "lora_out", "embeddings_out", "class_data", "run_dir")


def check_confined(cfg, roots: list[str | os.PathLike]) -> None:
    """Refuse (ValueError naming the field) a config from an untrusted caller (the HTTP API) whose text holds a NUL
    byte or that would write outside ``roots``: absolute paths elsewhere, ``../`` and links out all count."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(f"{f.name}: a NUL byte is not allowed")
    real_roots = [os.path.realpath(r) for r in roots if r]
    for name in WRITTEN_FIELDS:
        value = getattr(cfg, name, "")
        if not value:
            continue
        real = os.path.realpath(value)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in real_roots):
            raise ValueError(f"{name}: {value!r} is outside the WebUI's folders; give a folder inside "
                             f"{', '.join(sorted(set(real_roots)))}")


def next_number(folder: str | os.PathLike) -> int:
    """The next free number in ``folder`` as the WebUI counts its outputs: one more than the largest number that
    starts a file name there (``00012-345.png`` counts as 12), 0 in an empty or missing folder."""
    largest = -1
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            head = entry.name.split(".")[0].split("-")[0]
            if head.isdigit():
                largest = max(largest, int(head))
    return largest + 1
