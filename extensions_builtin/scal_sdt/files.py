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


#: torch dtype name -> the safetensors header's name for it
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
                      "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def write_safetensors(tensors: dict, f, metadata: dict[str, str] | None = None, dtype=None) -> None:
    """``tensors`` in the ``.safetensors`` layout into the open binary file ``f``, one tensor at a time: none is
    copied whole into memory beside the others (a full-size checkpoint is never held twice). ``dtype`` casts the
    floating-point tensors as they are written. The header's keys are sorted and the data goes widest type first,
    then by name (every tensor aligned to its element size), so the same weights always give the same bytes."""
    import json
    import struct

    import torch

    def out_dtype(t):
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    order = sorted(tensors, key=lambda k: (-out_dtype(tensors[k]).itemsize, k))
    header: dict = {}
    offset = 0
    for key in order:
        t = tensors[key]
        kind = str(out_dtype(t)).removeprefix("torch.")
        if kind not in SAFETENSORS_DTYPES:
            raise ValueError(f"{key}: tensors of type {kind} cannot be written to a .safetensors file")
        size = t.numel() * out_dtype(t).itemsize
        header[key] = {"dtype": SAFETENSORS_DTYPES[kind], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    f.write(struct.pack("<Q", len(raw)) + raw)
    for key in order:
        t = tensors[key].detach()
        t = t.to("cpu", out_dtype(t)).contiguous()
        f.write(t.reshape(-1).view(torch.uint8).numpy().data)


def read_safetensors_into(path: str | os.PathLike, tensors: dict) -> None:
    """Fill ``tensors`` (CPU tensors, by name) in place from the ``.safetensors`` file at ``path``, reading each
    straight into its memory: nothing is allocated beside them and nothing is memory-mapped (a mapped file counts
    in the process's resident memory while it is read). Every name must be in the file with the same dtype and
    shape."""
    import json
    import struct

    import torch

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        start = 8 + n
        for key, t in tensors.items():
            entry = header.get(key)
            kind = SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
            if entry is None or entry["dtype"] != kind or entry["shape"] != list(t.shape):
                raise ValueError(f"{path}: {key} is {entry and (entry['dtype'], entry['shape'])}, not "
                                 f"{(kind, list(t.shape))}")
            begin, end = entry["data_offsets"]
            target = t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
            f.seek(start + begin)
            view = memoryview(target.reshape(-1).view(torch.uint8).numpy()).cast("B")
            if f.readinto(view) != end - begin:
                raise ValueError(f"{path}: {key} is cut short")
            if target is not t:
                t.copy_(target)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                     dtype=None) -> Path:
    """Write ``tensors`` as a ``.safetensors`` file atomically and deterministically (:func:`write_safetensors`;
    the library itself orders metadata keys by a per-process hash, and serialises the whole file in memory first)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write_safetensors(tensors, f, metadata, dtype)
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
