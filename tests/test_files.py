"""Atomic writes: the old file stays whole when writing fails, no temporary file is left, and the new file has the
permissions an ordinary write would give it (mkstemp's are private: a checkpoint in a shared models folder that
other users could not read)."""
import os

import pytest

from scal_sdt.files import atomic_path, atomic_write_text


def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "a.txt"
        atomic_write_text(path, "one")
        assert path.read_text() == "one" and path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        atomic_write_text(path, "two")
        assert path.read_text() == "two" and path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "b.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["b.txt"]


def test_safetensors_are_streamed_cast_and_the_same_bytes_each_time(tmp_path):
    """``save_safetensors`` writes one tensor at a time (a full-size checkpoint is never held twice in RAM): every
    dtype and shape reads back equal with the safetensors library, ``dtype`` casts only the floating-point ones,
    the metadata survives, and the same tensors give the same bytes."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from scal_sdt.files import save_safetensors

    torch.manual_seed(0)
    tensors = {"w": torch.randn(4, 6), "t": torch.randn(3, 5).t(), "ids": torch.arange(7), "h": torch.randn(3).half(),
               "b": torch.randn(5, dtype=torch.bfloat16), "mask": torch.tensor([True, False]), "none": torch.zeros(0, 3),
               "scalar": torch.tensor(2.5)}
    save_safetensors(tensors, tmp_path / "a.safetensors", {"format": "pt", "note": "ünïcode"})
    save_safetensors(dict(reversed(tensors.items())), tmp_path / "b.safetensors", {"note": "ünïcode", "format": "pt"})
    back = load_file(tmp_path / "a.safetensors")
    assert set(back) == set(tensors)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "ünïcode"}
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    save_safetensors(tensors, tmp_path / "c.safetensors", dtype=torch.float16)
    cast = load_file(tmp_path / "c.safetensors")
    assert cast["w"].dtype == torch.float16 and torch.equal(cast["w"], tensors["w"].half())
    assert cast["ids"].dtype == torch.int64 and cast["mask"].dtype == torch.bool
    with pytest.raises(ValueError, match="strings"):
        save_safetensors(tensors, tmp_path / "d.safetensors", {"step": 3})
    assert not (tmp_path / "d.safetensors").exists()


def test_a_safetensors_file_is_read_back_into_the_tensors_in_place(tmp_path):
    import torch

    from scal_sdt.files import read_safetensors_into, save_safetensors

    torch.manual_seed(0)
    saved = {"w": torch.randn(4, 6), "b": torch.randn(5, dtype=torch.bfloat16), "n": torch.arange(3)}
    save_safetensors(saved, tmp_path / "a.safetensors")
    into = {"w": torch.zeros(6, 4).t(), "b": torch.zeros(5, dtype=torch.bfloat16), "n": torch.zeros(3, dtype=torch.long)}
    pointers = {k: v.data_ptr() for k, v in into.items()}
    read_safetensors_into(tmp_path / "a.safetensors", into)
    assert all(torch.equal(into[k], saved[k]) and into[k].data_ptr() == pointers[k] for k in saved)
    with pytest.raises(ValueError, match="w is"):
        read_safetensors_into(tmp_path / "a.safetensors", {"w": torch.zeros(4, 6, dtype=torch.float16)})
