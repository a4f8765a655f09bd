"""Is the process an engine record names really our engine?  (DESIGN §10)

A record in ``<runtime>/engines`` is a claim: pid, start time, command line.
Pid and start time prove the pid was not *reused* since we wrote the record,
but not that we wrote it: anyone who could write into the runtime dir could
name any process, with its start time read from ``/proc``, and the supervisor
(perhaps root) would adopt it and later SIGKILL its whole process group.  So
before a re-adopted or recorded pid is signalled, it must also

* run the command line we launched (``/proc/PID/cmdline`` equals the record's
  ``argv``; ``taskset -c CPUS`` execs its command, so that prefix may be gone),
* belong to us or to the engine user (``runas.py``) — never to anyone else.

A process group whose leader has died is only killed when every member that is
left belongs to us or the engine user.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..engines.base import is_alive
from . import runas
from .statefile import EngineRecord

_PROC = Path("/proc")


def cmdline_of(pid: int) -> list[str] | None:
    """The process's argv as the kernel has it, or None if it is gone or unreadable."""
    raw = runas.as_engine(lambda: _read(_PROC / str(pid) / "cmdline"))
    if not raw:
        return None  # a kernel thread or a zombie
    return raw.rstrip(b"\0").decode("utf-8", "surrogateescape").split("\0")


def uid_of(pid: int) -> int | None:
    """The process's real uid (``/proc/PID/status``), or None."""
    raw = runas.as_engine(lambda: _read(_PROC / str(pid) / "status"))
    try:
        for line in (raw or b"").decode("ascii", "replace").splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (ValueError, IndexError):
        return None
    return None


def _read(path: Path) -> bytes | None:
    """A /proc file, or None (gone, or hidden from us: ``runas.as_engine`` tries again)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _pids() -> set[str]:
    """Every pid we can see, our engines' included (hidden from our own ids under
    ``ProtectProc=invisible`` when they run as their own user)."""
    def listing() -> set[str]:
        try:
            return {e for e in os.listdir(_PROC) if e.isdigit()}
        except OSError:
            return set()
    return listing() | (runas.with_engine_creds(listing) or set())


def expected_cmdlines(argv: list[str]) -> list[list[str]]:
    """What ``/proc/PID/cmdline`` of an engine launched with ``argv`` may read."""
    out = [list(argv)]
    if len(argv) > 3 and argv[0] == "taskset" and argv[1] == "-c":
        out.append(list(argv[3:]))
    return out


def allowed_uids() -> set[int]:
    """Whose processes a supervisor may signal as its engines: its own and the engine user's."""
    uids = {os.geteuid()}
    engine = runas.engine_user_ids()
    if engine is not None:
        uids.add(engine[0])
    return uids


def why_not_ours(rec: EngineRecord) -> str:
    """"" when ``rec`` names our running engine; else why not (it is then never signalled)."""
    if not is_alive(rec.pid, rec.start_time):
        return f"pid {rec.pid} with that start time is not running"
    if not rec.argv:
        return "the record has no command line to check"
    cmd = cmdline_of(rec.pid)
    if cmd is None or cmd not in expected_cmdlines(rec.argv):
        shown = " ".join(cmd or [])[:120]
        return f"pid {rec.pid} runs {shown!r}, not the engine's command line"
    uid = uid_of(rec.pid)
    if uid is None or uid not in allowed_uids():
        return f"pid {rec.pid} belongs to uid {uid}, neither us nor the engine user"
    return ""


def is_our_engine(rec: EngineRecord) -> bool:
    return not why_not_ours(rec)


def group_is_ours(pgid: int) -> bool:
    """Every live member of process group ``pgid`` belongs to us or the engine user."""
    allowed = allowed_uids()
    for entry in _pids():
        raw = runas.as_engine(lambda entry=entry: _read(_PROC / entry / "stat"))
        if raw is None:
            continue
        stat = raw.decode("ascii", "replace")
        rest = stat[stat.rfind(")") + 2:].split()
        try:
            if int(rest[2]) != pgid:  # field 5, the process group
                continue
        except (IndexError, ValueError):
            continue
        if uid_of(int(entry)) not in allowed:
            return False
    return True
