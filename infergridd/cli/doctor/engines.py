"""Each managed engine's command: its interpreter exists and imports the engine's module."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import Config
from .check import FAIL, OK, WARN, Check, Runner


def _split_launcher(argv: Sequence[str]) -> list[str]:
    """Drop a ``taskset -c LIST`` prefix (cpu_affinity): the engine command follows it."""
    if argv and Path(argv[0]).name == "taskset" and len(argv) > 3 and argv[1] == "-c":
        return list(argv[3:])
    return list(argv)


def _probe_as(user: str | None) -> dict[str, Any]:
    """Run probes as the daemons' user when root (a root-only venv would fool us)."""
    if user is None or os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pw.pw_dir}}


def check_engines(cfg: Config, user: str | None = None, run: Runner = subprocess.run,
                  timeout_s: float = 120.0) -> list[Check]:
    """Each managed engine's command exists, and its Python can import the engine module."""
    from ...engines import AdapterConfigError, adapter_for

    out: list[Check] = []
    probed: dict[tuple[str, str], Check] = {}
    for m in cfg.models:
        name = f"engine {m.name}"
        try:
            adapter = adapter_for(m)
            if not adapter.managed:
                out.append(Check(OK, name, f"{m.engine} endpoint {m.url}: not launched here"))
                continue
            full = adapter.launch_spec(0, "doctor").argv
        except (AdapterConfigError, KeyError, ValueError) as exc:
            out.append(Check(FAIL, name, f"cannot build the {m.engine} command: {exc}",
                             "fix the model's args in the config"))
            continue
        if full and Path(full[0]).name == "taskset" and shutil.which(full[0]) is None:
            out.append(Check(FAIL, name, "taskset not found (cpu_affinity is set)",
                             "apt-get install util-linux"))
            continue
        argv = _split_launcher(full)
        exe = shutil.which(argv[0]) if argv else None
        if exe is None:
            out.append(Check(FAIL, name, f"{argv[0] if argv else '(empty)'}: not found",
                             "install the engine, or set models[].python to its interpreter"))
            continue
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
        if not module:
            out.append(Check(OK, name, f"{exe} exists"))
            continue
        key = (exe, module)
        if key not in probed:
            probed[key] = _probe_module(exe, module, user, run, timeout_s)
        c = probed[key]
        out.append(Check(c.status, name, c.detail, c.fix))
    return out


_PROBE = ("import importlib.util, sys\n"
          "m = sys.argv[1]\n"
          "try:\n"
          "    ok = importlib.util.find_spec(m) is not None\n"
          "except Exception as e:\n"
          "    print(f'{type(e).__name__}: {e}'); sys.exit(4)\n"
          "sys.exit(0 if ok else 3)\n")


def _probe_module(exe: str, module: str, user: str | None, run: Runner,
                  timeout_s: float) -> Check:
    """``find_spec`` of the engine's module imports its parent packages (vllm, torch...)."""
    extra = _probe_as(user)
    who = f" as {user}" if extra else ""
    try:
        r = run([exe, "-c", _PROBE, module], capture_output=True, text=True,
                timeout=timeout_s, **extra)
    except subprocess.TimeoutExpired:
        return Check(WARN, "engine", f"{exe} took over {timeout_s:g}s to import {module}",
                     "check the engine's installation by hand")
    except OSError as exc:
        return Check(FAIL, "engine", f"cannot run {exe}{who}: {exc.strerror}",
                     "check models[].python and its permissions")
    if r.returncode == 0:
        return Check(OK, "engine", f"{exe} imports {module}{who}")
    why = (r.stdout + r.stderr).strip().splitlines()
    reason = why[-1] if why else f"exit {r.returncode}"
    if r.returncode == 3:
        reason = f"no module {module}"
    return Check(FAIL, "engine", f"{exe}{who} cannot import {module}: {reason}",
                 "install the engine into that Python, or set models[].python")
