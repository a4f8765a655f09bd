"""Which user an engine runs as (DESIGN §10: engines are untrusted, like the internet).

An engine runs model code on tenants' prompts, so it gets less than the
supervisor: its own user, ``infergrid-engine`` (the package's postinst creates
it, system user, no login), never the supervisor's user (whose peer credentials
the scheduler's ``supervisor.sock`` admits), never ``systemd-journal`` nor the
daemons' group ``infergrid`` (``control-ro.sock``, the configuration).  Its groups:

* ``infergrid-enginesock`` as its gid: the group of everything it creates, its
  socket above all (0770 under its umask), which lets the daemons of that group
  (front door, supervisor) connect and nobody else;
* its own group ``infergrid-engine``, supplementary: it may write its own
  directory ``<engines>/<id>.d`` (the supervisor's, group ``infergrid-engine``,
  0771) and read its key file (0640); the front door may pass that directory but
  never write in it, so it cannot plant a socket where an engine will listen.

None of that needs ``CAP_CHOWN`` or ``CAP_DAC_OVERRIDE``: the supervisor owns every
directory and gives it to a group it is in (``infergrid-supervisor.service``'s
``SupplementaryGroups=``).  It needs ``CAP_SETUID`` and ``CAP_SETGID`` (to start the
engine with those ids, and below), nothing more — ``CAP_KILL`` neither:

* the unit grants them as *ambient* capabilities, which every program it execs would
  keep — an engine too, which could then become anyone.  So the supervisor clears
  its ambient set at start (``drop_ambient``): it keeps them, its children do not
  (an execve without ambient capabilities or file capabilities drops them all);
* ``ProtectProc=invisible`` hides an engine of another user from the supervisor's
  ``/proc``, and signals need the target's uid.  So a ``/proc`` read or a signal
  aimed at an engine that fails as ourselves is made once more with the engine's
  uid and gid as *this thread's* effective ids (``as_engine``: raw ``setresuid``,
  which unlike glibc's wrapper changes one thread only), then put back at once.

The switch happens only when it can happen completely (``decide``, pure, for the
tests); otherwise the engine runs as the supervisor's own user and why is logged.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import platform
import pwd
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..assist.launch import SHIM_DIRNAME
from ..engines import base as engines_base

log = logging.getLogger("infergrid.supervisor")

ENGINE_USER = "infergrid-engine"
ENV_USER = "INFERGRID_ENGINE_USER"
#: the engines' gid: who may connect to their sockets (the front door, the supervisor)
SOCK_GROUP = "infergrid-enginesock"

CAP_CHOWN, CAP_SETGID, CAP_SETUID = 0, 6, 7
NEEDED_CAPS = {"CAP_SETUID": CAP_SETUID, "CAP_SETGID": CAP_SETGID}

T = TypeVar("T")


@dataclass(frozen=True)
class RunAs:
    """Run the engine as ``uid`` with gid ``gid`` (the socket group) and ``own_gid`` (its
    own group) as its only supplementary group."""

    name: str
    uid: int
    gid: int
    own_gid: int


def engine_user_name() -> str:
    return os.environ.get(ENV_USER, ENGINE_USER)


def engine_user_ids() -> tuple[int, int] | None:
    """(uid, primary gid) of the engine user, or None when there is none (or it is off)."""
    name = engine_user_name()
    if not name:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


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


def can_reach(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether ``uid`` with groups ``gids`` may pass through every directory down to
    ``path`` (its execute bit for owner, group or others, as applies to it)."""
    for d in [*reversed(path.parents), path]:
        try:
            st = os.stat(d)
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def decide(euid: int, caps: int, name: str, user: tuple[int, int] | None,
           sock_gid: int | None = None, in_groups: bool = True,
           reachable: bool = True) -> tuple[RunAs | None, str]:
    """(whom to run engines as, None: ourselves; why) from what the process has.

    ``sock_gid``: the gid of ``SOCK_GROUP``; ``in_groups``: we are in it and in the
    engine user's group (or hold ``CAP_CHOWN``), so may give directories to them;
    ``reachable``: the engine user may pass down to the engines' directory."""
    if not name:
        return None, f"{ENV_USER} is empty: engines run as the supervisor's user"
    if user is None:
        return None, f"no user {name!r}: engines run as the supervisor's user"
    uid, own_gid = user
    if uid == euid:
        return None, f"the supervisor already runs as {name!r}"
    missing = [n for n, bit in NEEDED_CAPS.items() if not caps & (1 << bit)]
    if missing:
        return None, (f"the supervisor lacks {', '.join(missing)}: engines run as its own "
                      f"user, not {name!r}")
    if sock_gid is None:
        return None, f"no group {SOCK_GROUP!r}: engines run as the supervisor's user"
    if not in_groups:
        return None, (f"the supervisor is not in groups {SOCK_GROUP!r} and {name!r}: engines "
                      "run as its own user")
    if not reachable:
        return None, (f"user {name!r} cannot pass through the runtime dir to its socket: "
                      "engines run as the supervisor's user")
    return RunAs(name, uid, sock_gid, own_gid), (
        f"engines run as user {name!r} (uid {uid}), groups {SOCK_GROUP!r} and {name!r} only")


#: the group given the engines dir, first one we are a member of: the engines' socket
#: group, else the front door's own group, else the daemons' shared group (under
#: ``infergrid serve`` none: every daemon is the same user)
SOCKET_GROUPS = (SOCK_GROUP, "infergrid-frontdoor", "infergrid")


def socket_group(groups: list[int] | None = None) -> int | None:
    """The gid the engines dir (and so what reaches their sockets) gets, or None: keep our
    own (``SOCKET_GROUPS``, only groups we are in)."""
    mine = set(os.getgroups() if groups is None else groups)
    for name in SOCKET_GROUPS:
        gid = group_id(name)
        if gid is not None and gid in mine:
            return gid
    return None


def prepare_engines_dir(engines_dir: Path) -> None:
    """The engines dir, 0710 and the socket group's: that group (front door, engines) may
    pass, never list; others nothing.  Setgid (02710) too where allowed, so that engines
    of our own user make sockets of that group; under ``RestrictSUIDSGID=`` it is not, and
    not needed: there the engines run as their own user with that group as their gid."""
    engines_dir.mkdir(mode=0o710, parents=True, exist_ok=True)
    gid = socket_group()
    if gid is not None:
        os.chown(engines_dir, -1, gid, follow_symlinks=False)
    try:
        os.chmod(engines_dir, 0o2710)
    except PermissionError:
        os.chmod(engines_dir, 0o710)
    # vLLM's assist shim (assist/launch.py): a symlink to this package, which an engine of
    # another user must list and import
    shim = engines_dir / SHIM_DIRNAME
    shim.mkdir(mode=0o755, exist_ok=True)
    os.chmod(shim, 0o755)


def give_dir(path: Path, gid: int, mode: int) -> None:
    """``path``, a directory of ours (never through a symlink), to group ``gid``."""
    path.mkdir(mode=mode & 0o777, exist_ok=True)
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise OSError(f"{path} is a symlink")
    os.chown(path, -1, gid, follow_symlinks=False)
    os.chmod(path, mode)


def run_as(engines_dir: Path) -> RunAs | None:
    """The decision for this process, logged once per supervisor."""
    user = engine_user_ids()
    sock_gid = group_id(SOCK_GROUP)
    caps = effective_caps()
    mine = {os.getegid(), *os.getgroups()}
    in_groups = bool(caps & (1 << CAP_CHOWN)) or (
        user is not None and sock_gid is not None and {sock_gid, user[1]} <= mine)
    reach = (user is not None and sock_gid is not None
             and can_reach(engines_dir.parent, user[0], {sock_gid, user[1]}))
    who, why = decide(os.geteuid(), caps, engine_user_name(), user, sock_gid, in_groups, reach)
    if who is not None and os.geteuid() != 0 and platform.machine() not in _SYSCALLS:
        # without CAP_KILL it could neither see (ProtectProc=) nor stop such an engine
        who, why = None, (f"no per-thread setresuid known on {platform.machine()}: engines run "
                          "as the supervisor's user")
    log.info("%s", why)
    if who is not None and os.stat(engines_dir).st_gid != who.gid:
        # root under `infergrid serve` is in no group of ours: the engines pass by their gid
        os.chown(engines_dir, -1, who.gid, follow_symlinks=False)
    return who


def engine_env(who: RunAs | None, env: dict[str, str]) -> None:
    """An engine of its own user cannot write the supervisor's ``$HOME``: its caches (vLLM,
    torch, Triton, the Hugging Face hub) go to ``$XDG_CACHE_HOME/engines`` (group
    ``infergrid-engine``, 0770) when the supervisor has one (its unit's CacheDirectory=)."""
    cache = env.get("XDG_CACHE_HOME")
    if who is None or not cache:
        return
    d = Path(cache) / "engines"
    try:
        give_dir(d, who.own_gid, 0o770)
    except OSError as exc:
        log.warning("no cache directory for the engines (%s): %s", d, exc)
        return
    env["HOME"] = env["XDG_CACHE_HOME"] = str(d)


# --------------------------------------------------------------------------- credentials

PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
#: raw system call numbers: glibc's setresuid() changes every thread, these one
_SYSCALLS = {"x86_64": (117, 119), "aarch64": (147, 149)}  # setresuid, setresgid
_libc = ctypes.CDLL(None, use_errno=True)


def drop_ambient() -> None:
    """Clear this process's ambient capabilities (its own effective ones stay), so that no
    program it execs — an engine above all — inherits ``CAP_SETUID``/``CAP_SETGID``."""
    if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("cannot clear the ambient capabilities: %s", os.strerror(err))


def ambient_caps() -> int:
    """This process's ambient capability set (``CapAmb``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapAmb:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def engine_creds() -> tuple[int, int] | None:
    """(uid, gid) of the engines when this process runs them as their own user and may
    take their ids for a moment (``CAP_SETUID``, ``CAP_SETGID``); else None."""
    user = engine_user_ids()
    sock_gid = group_id(SOCK_GROUP)
    if user is None or sock_gid is None or user[0] == os.geteuid():
        return None
    caps = effective_caps()
    if not all(caps & (1 << bit) for bit in NEEDED_CAPS.values()):
        return None
    return user[0], sock_gid


class CredsError(RuntimeError):
    """This thread could not take (or give back) an effective id."""


def _setres(which: int, eid: int) -> None:
    nums = _SYSCALLS.get(platform.machine())
    if nums is None:
        raise CredsError(f"no raw setresuid for {platform.machine()}")
    if _libc.syscall(nums[which], -1, eid, -1) != 0:
        raise CredsError(os.strerror(ctypes.get_errno()))


@contextmanager
def thread_as(uid: int, gid: int) -> Iterator[None]:
    """This thread's effective uid and gid (so its file-system ids) are ``uid``/``gid``
    inside; real and saved ids stay ours, so they are always put back."""
    euid, egid = os.geteuid(), os.getegid()
    _setres(1, gid)
    try:
        _setres(0, uid)
        try:
            yield
        finally:
            _setres(0, euid)
    finally:
        _setres(1, egid)


def with_engine_creds(fn: Callable[[], T]) -> T | None:
    """``fn()`` with the engines' ids (``thread_as``); None when this process cannot."""
    creds = engine_creds()
    if creds is None:
        return None
    try:
        with thread_as(*creds):
            return fn()
    except CredsError as exc:
        log.warning("cannot take the engine user's ids: %s", exc)
        return None


def as_engine(fn: Callable[[], T]) -> T:
    """``fn()`` (a /proc read, None when it found nothing; or a signal) as ourselves, and
    where that finds nothing or is refused, once more with the engines' ids."""
    try:
        got = fn()
    except PermissionError:
        if engine_creds() is None:
            raise
        got = None
        again = with_engine_creds(fn)
        if again is None:
            raise
        return again
    if got is None:
        again = with_engine_creds(fn)
        if again is not None:
            return again
    return got


# every /proc read and signal the engines module aims at an engine goes through here
engines_base.engine_proc_access = as_engine
