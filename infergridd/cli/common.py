"""Pieces the three console scripts share: config loading, directories, process titles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec

from ..config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_RUNTIME_DIR,
    Config,
    ConfigError,
    Dirs,
    load,
    resolve_dirs,
)

EX_CONFIG = 78  # sysexits.h: configuration error; units set RestartPreventExitStatus=78


def user_runtime_dir() -> Path:
    """Where a non-root ``infergrid serve`` keeps its sockets when none is configured."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.access(xdg, os.W_OK):
        return Path(xdg) / "infergrid"
    return Path(f"/tmp/infergrid-{os.getuid()}")


def user_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "infergrid"


def candidate_runtime_dirs() -> list[Path]:
    """Where infergridctl looks for a running appliance, in order."""
    out = []
    env = os.environ.get("INFERGRID_RUNTIME_DIR")
    if env:
        out.append(Path(env))
    out.append(Path(DEFAULT_RUNTIME_DIR))
    out.append(user_runtime_dir())
    return out


def load_config_or_exit(path: str, prog: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def dirs_for(cfg: Config, runtime_dir: str | None, state_dir: str | None,
             user_defaults: bool = False) -> Dirs:
    """Command line > systemd's env > config > default (the user's own dirs for ``serve``)."""
    if user_defaults and os.getuid() != 0:
        if not (runtime_dir or os.environ.get("RUNTIME_DIRECTORY") or cfg.runtime_dir):
            runtime_dir = str(user_runtime_dir())
        if not (state_dir or os.environ.get("STATE_DIRECTORY") or cfg.state_dir):
            state_dir = str(user_state_dir())
    return resolve_dirs(cfg, runtime_dir, state_dir)


def with_listen(cfg: Config, listen: str | None) -> Config:
    return msgspec.structs.replace(cfg, listen=listen) if listen else cfg


def set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # pragma: no cover - it is a dependency; ps just shows python
        pass


__all__ = ["DEFAULT_CONFIG_PATH", "EX_CONFIG", "candidate_runtime_dirs", "dirs_for",
           "load_config_or_exit", "set_title", "user_runtime_dir", "user_state_dir",
           "with_listen"]
