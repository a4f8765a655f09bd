"""Which user an engine runs as (DESIGN §10: engines are untrusted, like the internet).

An engine runs model code on tenants' prompts, so it gets less than the
supervisor: its own user, ``infergrid-engine`` (the package's postinst creates
it, system user, no login, no supplementary groups — in particular not
``systemd-journal``, which the supervisor's unit has to read engine logs, nor
the daemons' group, which admits to the scheduler's sockets).

The supervisor switches to it only when it can do so completely:

* the user exists (``INFERGRID_ENGINE_USER`` names another one; set it empty to
  turn the switch off);
* the supervisor is not already that user;
* it may pass through every directory down to the runtime dir (``can_reach``: under
  ``sudo infergrid serve`` the runtime dir is root's and 0700, so it may not);
* it holds ``CAP_SETUID`` and ``CAP_SETGID`` (to switch and drop every group)
  and ``CAP_CHOWN`` and ``CAP_DAC_OVERRIDE`` (to give the engine a directory of its
  own for its socket and to reach it afterwards) — root has them all; a unit
  may grant them with ``AmbientCapabilities=``.

Otherwise the engine runs as the supervisor's own user, as before, and the
reason is logged once.  ``decide`` is the whole decision, pure, for the tests.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("infergrid.supervisor")

ENGINE_USER = "infergrid-engine"
ENV_USER = "INFERGRID_ENGINE_USER"

CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_SETGID, CAP_SETUID = 0, 1, 6, 7
NEEDED_CAPS = {"CAP_SETUID": CAP_SETUID, "CAP_SETGID": CAP_SETGID, "CAP_CHOWN": CAP_CHOWN,
               "CAP_DAC_OVERRIDE": CAP_DAC_OVERRIDE}


@dataclass(frozen=True)
class RunAs:
    """Run the engine as this user, with its primary group only."""

    name: str
    uid: int
    gid: int


def engine_user_name() -> str:
    return os.environ.get(ENV_USER, ENGINE_USER)


def engine_user_ids() -> tuple[int, int] | None:
    """(uid, gid) of the engine user, or None when there is none (or it is turned off)."""
    name = engine_user_name()
    if not name:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def effective_caps() -> int:
    """This process's effective capability set (``CapEff`` in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def can_reach(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid`` (group ``gid`` only) may pass through every directory down to
    ``path`` (its execute bit for owner, group or others, as applies to it)."""
    for d in [*reversed(path.parents), path]:
        try:
            st = os.stat(d)
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def decide(euid: int, caps: int, name: str, user: tuple[int, int] | None,
           reachable: bool = True) -> tuple[RunAs | None, str]:
    """(whom to run engines as, None: ourselves; why) from what the process has;
    ``reachable``: the engine user may pass down to the engines' directory."""
    if not name:
        return None, f"{ENV_USER} is empty: engines run as the supervisor's user"
    if user is None:
        return None, f"no user {name!r}: engines run as the supervisor's user"
    uid, gid = user
    if uid == euid:
        return None, f"the supervisor already runs as {name!r}"
    missing = [n for n, bit in NEEDED_CAPS.items() if not caps & (1 << bit)]
    if missing:
        return None, (f"the supervisor lacks {', '.join(missing)}: engines run as its own "
                      f"user, not {name!r}")
    if not reachable:
        return None, (f"user {name!r} cannot pass through the runtime dir to its socket: "
                      "engines run as the supervisor's user")
    return RunAs(name, uid, gid), f"engines run as user {name!r} (uid {uid}), no extra groups"


#: the group given the engines dir (so its sockets), first one we are a member of: the
#: front door's own group, else the daemons' shared group (under ``infergrid serve`` none:
#: every daemon is the same user)
SOCKET_GROUPS = ("infergrid-frontdoor", "infergrid")


def socket_group(groups: list[int] | None = None) -> int | None:
    """The gid the engines' sockets get so that the front door (maybe its own user) may
    connect, or None: keep our own (``SOCKET_GROUPS``, only groups we are in)."""
    mine = set(os.getgroups() if groups is None else groups)
    for name in SOCKET_GROUPS:
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        if gid in mine:
            return gid
    return None


def prepare_engines_dir(engines_dir: Path) -> None:
    """The engines dir, 02710: the socket group may pass (never list), others nothing;
    setgid, so an engine's socket (0770 under its umask) is the socket group's too."""
    engines_dir.mkdir(mode=0o710, parents=True, exist_ok=True)
    gid = socket_group()
    if gid is not None:
        os.chown(engines_dir, -1, gid, follow_symlinks=False)
    os.chmod(engines_dir, 0o2710)


def run_as(engines_dir: Path) -> RunAs | None:
    """The decision for this process, logged once per supervisor.  ``engines_dir`` is made
    passable (0711) for the engine user then: it holds each engine's own directory."""
    user = engine_user_ids()
    reach = user is not None and can_reach(engines_dir.parent, *user)
    who, why = decide(os.geteuid(), effective_caps(), engine_user_name(), user, reach)
    log.info("%s", why)
    if who is not None:
        os.chmod(engines_dir, 0o2711)
    return who
