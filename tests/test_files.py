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
