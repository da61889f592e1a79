"""Atomic writes: a file or a directory appears complete under its name, or not at all (never half written).

Everything the project writes for others to read goes through here: prediction files and tables
(`atomic_write_text`), figures and other binary files (`atomic_write_bytes`, or `atomic_path` for a library that
writes to a path itself), and directories such as exports, tokenizers and cache entries (`atomic_directory`).

Temporaries are hidden siblings named `.{name}.tmp-{pid}@{host}-{8 hex}` (and `.{name}.old-...` for a directory moved
out of the way), so `remove_stale_temporaries` can tell which ones a killed process left behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

# Older versions wrote no `@{host}`.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:@(?P<host>.+))?-(?P<uid>[0-9a-f]{8})$")


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _tag() -> str:
    """This process and machine, plus a random part: unique among concurrent writers of one folder."""
    return f"{os.getpid()}@{_host()}-{uuid.uuid4().hex[:8]}"


def temporary_sibling(path: str | os.PathLike, kind: str = "tmp", tag: str | None = None) -> Path:
    """A fresh hidden name beside `path` to write before the rename.

    Args:
        path: the final name.
        kind: "tmp" (being written) or "old" (a previous version moved out of the way).
        tag: the unique part (default: a new one); one tag links a directory's `tmp` and `old` names.
    """
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{tag or _tag()}"


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove what a killed process left in `directory` while writing atomically; return what was removed.

    A temporary is stale when it was made on this machine by a process that no longer runs (a temporary of another
    machine sharing the folder, or of a live process, is left alone). A stale `.{name}.old-*` is the previous good
    `name` that a killed process had moved aside just before renaming its new one in: it is moved back when `name`
    is missing, else removed.
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    host = _host()
    for path in entries:
        match = _TEMPORARY.match(path.name)
        if match is None or (match["host"] or host) != host or _pid_alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        try:
            if match["kind"] == "old" and not target.exists():
                path.rename(target)  # the previous good directory comes back
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
        except FileNotFoundError:  # another process cleaned it up first
            pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name beside `path` for the body to write; on success it is renamed over `path`.

    If the body raises, the temporary is removed and an existing `path` is left untouched. The body creates the file
    like any new file (mkstemp would make it 0600: unreadable to others once renamed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, `\\n` line ends on every platform) to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `target`; on success it replaces `target` by renames.

    If the body raises, the temporary directory is removed and an existing `target` (a previous good export) is left
    untouched. Replacing an existing directory takes two renames (old out of the way, new in), never a partial copy.
    Temporaries that killed processes left next to `target` (exports, cache entries) are removed first
    (`remove_stale_temporaries`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    tag = _tag()
    tmp = temporary_sibling(target, "tmp", tag)
    tmp.mkdir()  # not mkdtemp: that would make it 0700, unreadable to others once renamed
    try:
        yield tmp
        old = temporary_sibling(target, "old", tag)
        if target.exists():
            target.rename(old)
        try:
            tmp.rename(target)
        except BaseException:
            if old.exists():
                old.rename(target)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
