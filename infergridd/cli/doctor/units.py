"""The appliance's systemd units, where systemd runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .check import FAIL, OK, WARN, Check, Runner

UNITS = ("infergrid.service", "infergrid-frontdoor.socket", "infergrid-scheduler.service",
         "infergrid-supervisor.service", "infergrid-frontdoor.service")


def under_systemd(booted: Path = Path("/run/systemd/system")) -> bool:
    return shutil.which("systemctl") is not None and booted.is_dir()


def check_units(run: Runner = subprocess.run) -> list[Check]:
    """``systemctl is-active`` of the appliance's units (call only under systemd)."""
    try:
        r = run(["systemctl", "is-active", *UNITS], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check(WARN, "units", f"systemctl failed: {exc}", "systemctl status infergrid")]
    states = r.stdout.split()
    if len(states) != len(UNITS):
        return [Check(WARN, "units", f"systemctl is-active said {r.stdout.strip()!r} "
                      f"{r.stderr.strip()!r}", "systemctl status 'infergrid*'")]
    by_unit = dict(zip(UNITS, states, strict=True))
    if all(s == "inactive" for s in states):
        return [Check(WARN, "units", "the appliance is not running",
                      "systemctl enable --now infergrid")]
    out: list[Check] = []
    umbrella_up = by_unit["infergrid.service"] == "active"
    for unit, state in by_unit.items():
        if state == "active":
            out.append(Check(OK, unit, state))
        elif state == "failed":
            out.append(Check(FAIL, unit, state,
                             f"journalctl -u {unit} -n 50; then systemctl restart {unit}"))
        elif umbrella_up and state in ("inactive", "deactivating"):
            out.append(Check(FAIL, unit, f"{state} while infergrid.service is active",
                             f"systemctl start {unit}; journalctl -u {unit}"))
        else:
            out.append(Check(WARN, unit, state, f"systemctl status {unit}"))
    return out
