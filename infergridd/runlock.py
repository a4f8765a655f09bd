"""Who runs on a runtime directory: one ``flock`` per role, with the holder's pid inside.

``infergrid serve`` (``serve.lock``), the scheduler (``scheduler.lock``) and the
supervisor (``supervisor.lock``) each hold theirs for their whole life; the
kernel drops it when the process dies, however it dies, so a lock is never
stale.  What they guard:

* the scheduler takes its lock *before* it unlinks a stale socket file: a second
  scheduler would otherwise unlink and silently steal the first one's path;
* the supervisor takes its lock *before* it adopts, launches or stops any engine,
  so a second instance on the same directory can never adopt (and later stop)
  the first one's engines (``infergridd stop-engines`` takes it too);
* ``infergrid serve`` looks at all three before it starts anything, and says
  "InferGrid is already running (pid N, runtime dir D)" instead.

Looking (``holder``) takes a shared lock for an instant and never blocks; taking
(``RunLock.acquire``) retries for a moment, so a look that happens to coincide
with a start does not make the start fail.  Lock files are opened without
following symlinks (DESIGN §10) and are not inherited by engines.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

#: exit status of a daemon that found its role already taken on this runtime dir
#: (EX_TEMPFAIL: a unit may try again; ``infergrid serve`` gives up and says why)
EX_IN_USE = 75

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class LockHeld(RuntimeError):
    """Another live process holds the lock; ``pid`` is what it wrote (0: unknown)."""

    def __init__(self, path: Path, pid: int, what: str) -> None:
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"another {what} holds {path} ({who}); refusing to run beside it")
        self.path = path
        self.pid = pid


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _owned_like_the_dir(fd: int, directory: Path) -> None:
    """Root taking a lock (``sudo infergridd stop-engines``) must not leave a 0600 root
    file the daemons' own user can then never open: give it to the directory's owner."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(directory)
        if st.st_uid != 0 and os.fstat(fd).st_uid == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
    except OSError:
        pass


class RunLock:
    """An exclusive ``flock`` on ``path`` for the life of this process (or ``release``)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 1.0) -> None:
        """Take the lock, retrying for ``wait_s``; ``LockHeld`` if another process keeps it."""
        fd = os.open(self.path, _FLAGS, 0o600)
        _owned_like_the_dir(fd, self.path.parent)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise LockHeld(self.path, pid, self.what) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> int | None:
    """``None`` if nobody holds ``path``'s lock, else the holder's pid (0: not readable).

    Never creates the file and never blocks; a lock file we may not open is taken
    for held (we cannot tell, and guessing "free" is the dangerous answer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
