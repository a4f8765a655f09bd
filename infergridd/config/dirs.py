"""Where a daemon keeps its sockets and its state (runtime and state directories)."""

from __future__ import annotations

import os
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

    scheduler_sock = _InRuntime("scheduler.sock")
    control_sock = _InRuntime("control.sock")
    scheduler_lock = _InRuntime("scheduler.lock")
    supervisor_lock = _InRuntime("supervisor.lock")  # held while adopting or running engines
    serve_lock = _InRuntime("serve.lock")  # held by `infergrid serve` (infergridd/runlock.py)
    #: per-engine state files the supervisor re-adopts from after a restart
    engines_dir = _InRuntime("engines")

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
