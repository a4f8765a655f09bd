"""The doctor's driver: which checks run in what order, and the text or JSON it prints."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...config import DEFAULT_CONFIG_PATH, Config, Dirs, resolve_dirs
from .check import FAIL, OK, SCHEDULER_USER, SUPERVISOR_USER, WARN, Check, daemon_group
from .config import check_config
from .dirs import check_runtime_dir, check_state_dir
from .engines import check_engines
from .gpu import GpuProbe, check_gpu, nvml_probe
from .gpus import check_gpus
from .keys import check_keys
from .port import check_port
from .units import check_units, under_systemd


def engines_running(dirs: Dirs) -> bool:
    """Any engine this appliance recorded still runs (its GPU memory is then ours)."""
    from ...engines.base import is_alive
    from ...supervisor import statefile

    try:
        return any(is_alive(r.pid, r.start_time) for r in statefile.load_all(dirs.engines_dir))
    except OSError:
        return False


def doctor_dirs(cfg: Config, runtime_dir: str | None, state_dir: str | None = None) -> Dirs:
    """The packaged dirs, or those of a running ``infergrid serve`` of this user."""
    if runtime_dir or cfg.runtime_dir or os.environ.get("RUNTIME_DIRECTORY"):
        return resolve_dirs(cfg, runtime_dir, state_dir)
    from ..common import candidate_runtime_dirs, user_runtime_dir, user_state_dir

    for d in candidate_runtime_dirs():
        if d.exists():
            if d == user_runtime_dir() and not cfg.state_dir:
                return Dirs(runtime=d, state=user_state_dir())
            return resolve_dirs(cfg, str(d))
    return resolve_dirs(cfg)


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # cannot look: check_config says why
        return True


def running_instance(runtime_dir: str | None, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """What the running scheduler says of itself (``status``: its config file and dirs),
    or None when no InferGrid answers.  How doctor finds a pip install's configuration:
    ``infergrid serve`` takes the file on its command line, not from /etc."""
    from ..infergridctl import Unreachable, call, find_control_socket

    try:
        reply = call(find_control_socket(runtime_dir, None, read_only=True), "status", {},
                     timeout_s)
    except (Unreachable, OSError):
        return None
    sched = reply.result.get("scheduler") if reply.ok and isinstance(reply.result, dict) else None
    return sched if isinstance(sched, dict) and sched.get("config") else None


def run_checks(config_path: str | None = None, runtime_dir: str | None = None,
               gpu_probe: GpuProbe | None = nvml_probe) -> list[Check]:
    checks: list[Check] = []
    state_dir = None
    if config_path is None and not _exists(DEFAULT_CONFIG_PATH):
        found = running_instance(runtime_dir)  # a pip install: ask the running instance
        if found is not None:
            config_path = str(found["config"])
            runtime_dir = runtime_dir or found.get("runtime_dir") or None
            state_dir = found.get("state_dir") or None
            checks.append(Check(OK, "instance", f"running (scheduler pid {found.get('pid')}); "
                                f"checking its configuration {config_path}"))
    path = config_path or DEFAULT_CONFIG_PATH
    c, cfg = check_config(path)
    checks.append(c)
    if cfg is not None:
        checks += check_keys(cfg)  # published or weak API keys (issue 14.9)
    group = daemon_group()
    if cfg is not None:
        dirs = doctor_dirs(cfg, runtime_dir, state_dir)
        checks += check_runtime_dir(dirs, group)
        # the scheduler writes the state; engines run as the supervisor's user
        checks.append(check_state_dir(dirs.state, group and SCHEDULER_USER))
        checks += check_engines(cfg, user=group and SUPERVISOR_USER)
        checks.append(check_gpu(cfg, gpu_probe, engines_running(dirs)))
        checks += check_gpus(cfg, gpu_probe, engines_running(dirs))  # each GPU, placement
        checks.append(check_port(cfg))
    if under_systemd():
        checks += check_units()
    return checks


def render(checks: list[Check]) -> str:
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines = [c.line() for c in checks]
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines)


def to_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not any(c.status == FAIL for c in checks),
                       "checks": [asdict(c) for c in checks]}, indent=2)


def main(config_path: str | None, runtime_dir: str | None, as_json: bool) -> int:
    checks = run_checks(config_path, runtime_dir)
    print(to_json(checks) if as_json else render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0
