"""Atomic writes (datamodules/atomic.py): complete or absent, no temporary left, readable like any new file."""
import os

import pytest

from datamodules.atomic import atomic_directory, atomic_path, atomic_write_bytes, atomic_write_text


def test_files_replace_whole_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "a.txt", "x\ny\n")
    assert (tmp_path / "a.txt").read_bytes() == b"x\ny\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "a.txt", "sub"]


def test_a_failed_write_keeps_the_previous_file_and_directory(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "good")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError
    assert (tmp_path / "a.txt").read_text() == "good" and not (tmp_path / "d").exists()
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("1")
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "g").write_text("2")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]
