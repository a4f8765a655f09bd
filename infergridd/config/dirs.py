"""Where a daemon keeps its sockets and its state (runtime and state directories)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import overload

import msgspec

from .schema import DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, Config, ConfigError


class _InRuntime:
    """A read-only attribute of ``Dirs``: one well-known name under the runtime dir."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, dirs: None, owner: type) -> _InRuntime: ...
    @overload
    def __get__(self, dirs: Dirs, owner: type | None = None) -> Path: ...

    def __get__(self, dirs: Dirs | None, owner: type | None = None) -> Path | _InRuntime:
        return self if dirs is None else dirs.runtime / self.name


class Dirs(msgspec.Struct, frozen=True):
    """Where a daemon keeps its sockets and its state; command line > config > default."""

    runtime: Path
    state: Path

    # Each daemon writes only in its own subdirectory (under systemd each unit runs as
    # its own user and owns ``RuntimeDirectory=infergrid/<role>``; the parent is root's).
    # The scheduler binds one socket per peer role (DESIGN §10): the role of a peer is
    # the socket it came in on, and each socket's mode and group admit only that role.
    #: the scheduler's directory: its sockets and its lock
    scheduler_dir = _InRuntime("scheduler")
    frontdoor_sock = _InRuntime("scheduler/frontdoor.sock")  # front doors only
    supervisor_sock = _InRuntime("scheduler/supervisor.sock")  # supervisors only
    control_sock = _InRuntime("scheduler/control.sock")  # infergridctl, every command (admins)
    control_ro_sock = _InRuntime("scheduler/control-ro.sock")  # infergridctl, read-only commands
    scheduler_lock = _InRuntime("scheduler/scheduler.lock")
    #: the supervisor's directory: its lock and its engines' records
    supervisor_dir = _InRuntime("supervisor")
    supervisor_lock = _InRuntime("supervisor/supervisor.lock")  # held while adopting or running engines
    #: per-engine state files the supervisor re-adopts from after a restart
    engines_dir = _InRuntime("supervisor/engines")
    serve_lock = _InRuntime("serve.lock")  # held by `infergrid serve` (infergridd/runlock.py)

    @staticmethod
    def ipc(path: Path) -> str:
        s = f"ipc://{path}"
        if len(str(path).encode()) > 107:
            raise ConfigError(f"socket path too long for ZeroMQ IPC (max 107 bytes): {path}")
        return s


def resolve_dirs(cfg: Config, runtime_dir: str | None = None, state_dir: str | None = None) -> Dirs:
    runtime = runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] \
        or cfg.runtime_dir or DEFAULT_RUNTIME_DIR
    state = state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0] \
        or cfg.state_dir or DEFAULT_STATE_DIR
    return Dirs(runtime=Path(runtime), state=Path(state))


class UnsafeDirError(ConfigError):
    """A directory we would keep sockets, locks or engine records in is not ours alone."""


def ensure_private_dir(path: Path, uid: int | None = None) -> Path:
    """Create ``path`` 0700, or accept it only if it is provably ours alone; return it.

    ``infergrid serve`` without ``XDG_RUNTIME_DIR`` falls back to the world-writable
    ``/tmp``: another local user could create ``/tmp/infergrid-<uid>`` first and then
    plant sockets, a lock symlink or engine records that make the supervisor signal
    a pid of their choosing (DESIGN §10).  So the directory must be a real directory
    (not a symlink), owned by ``uid`` (default: our effective uid), with no access
    for group or others.  A user's own one that is merely group/world *readable* is
    tightened to 0700 (nobody else could have written into it; root's is refused
    instead: it may be the packaged units' ``/run/infergrid``, which must not change
    under them); anything else is refused with an error that says what to do, never
    silently used.
    """
    uid = os.geteuid() if uid is None else uid
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; this is not
    except FileExistsError:
        pass
    st = os.lstat(path)
    fix = "remove it (if nothing runs there) or choose another --runtime-dir"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirError(f"runtime dir {path} is not a directory (a symlink or a file "
                             f"someone else put there?); {fix}")
    if st.st_uid != uid:
        raise UnsafeDirError(f"runtime dir {path} is owned by uid {st.st_uid}, not by us "
                             f"(uid {uid}): another user may have created it; {fix}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UnsafeDirError(f"runtime dir {path} is writable by others (mode {mode:04o}): "
                             f"files in it may have been planted; {fix}")
    if mode & 0o077:
        if uid == 0:  # e.g. /run/infergrid of the packaged units: never change it under them
            raise UnsafeDirError(f"runtime dir {path} is readable by others (mode {mode:04o}): "
                                 f"chmod 0700 it if nothing else uses it, or choose another "
                                 f"--runtime-dir")
        os.chmod(path, 0o700)
    return path
