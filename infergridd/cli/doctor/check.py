"""What one doctor check reports, and the owner/mode helpers every check group words alike."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DAEMON_USER = "infergrid"  # the packaged daemons' shared group (reads the config)
#: the packaged units' users (DESIGN §10: each unit its own); engines run as the supervisor's
SCHEDULER_USER = "infergrid-scheduler"
SUPERVISOR_USER = "infergrid-supervisor"

#: ``subprocess.run`` or a test's fake: every check that runs a command takes one.
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class Check:
    status: str  # OK | WARN | FAIL
    check: str  # short name: config, runtime-dir, control.sock, engine demo, ...
    detail: str
    fix: str = ""  # what to do (empty for OK)

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text


def mode_of(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def daemon_group() -> str | None:
    """``infergrid`` when the package's group exists (installed), else None (pip install)."""
    try:
        grp.getgrnam(DAEMON_USER)
    except KeyError:
        return None
    return DAEMON_USER
