"""Durable files: written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Temp file, fsync, rename, fsync of the directory.

    A crash at any point leaves either the old file or the new one, never a
    torn one — the state files are what a restarted daemon trusts.
    """
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_nofollow(path: Path, limit: int = 1 << 20) -> bytes:
    """The file's bytes (at most ``limit``), never through a symlink (``ELOOP`` instead).

    For the records a daemon trusts from its runtime dir (DESIGN §10): a symlink
    planted there must not make us read, and then act on, a file of someone else's.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)
