"""The runtime directory, the scheduler's sockets and the state directory: modes and owners.

Wrong groups and modes here are what an install most often gets wrong (a
socket any local user can reach, a state dir the daemons cannot write), so
each finding says the ``chmod``/``chgrp``/``chown`` that fixes it.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from ...config import Dirs
from ...transport.access import ROLE_GROUPS
from .check import FAIL, OK, WARN, Check, group_name, mode_of, user_name

#: the scheduler's sockets, each with the role whose group it admits (``transport/access``)
SOCKETS = (("control.sock", "control"), ("control-ro.sock", "control-ro"),
           ("frontdoor.sock", "frontdoor"), ("supervisor.sock", "supervisor"))
_USERS = {"control": "infergridctl (changes)", "control-ro": "infergridctl (reads)",
          "frontdoor": "the front door", "supervisor": "the supervisor"}


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def check_runtime_dir(dirs: Dirs, group: str | None) -> list[Check]:
    """The runtime dir and the scheduler's sockets: one per role, each 0660 to its role's
    group where the packaged groups exist (DESIGN §10), else 0600 (``infergrid serve``)."""
    d = dirs.runtime
    try:
        st = d.stat()
    except FileNotFoundError:
        return [Check(WARN, "runtime-dir", f"{d} does not exist: the appliance is not running",
                      "start it: systemctl enable --now infergrid (or infergrid serve)")]
    except PermissionError:
        return [Check(WARN, "runtime-dir", f"cannot look into {d.parent}",
                      "run as root or a member of the infergrid group")]
    out: list[Check] = []
    owner = f"{user_name(st.st_uid)}:{group_name(st.st_gid)}"
    if stat.S_IMODE(st.st_mode) & 0o022:
        out.append(Check(FAIL, "runtime-dir", f"{d} is {owner}, mode {mode_of(st)}: others "
                         "may create files in it", f"chmod go-w {d}"))
    else:
        out.append(Check(OK, "runtime-dir", f"{d} {owner} {mode_of(st)}"))
    sd = dirs.scheduler_dir
    try:
        sst = sd.stat()
    except FileNotFoundError:
        out.append(Check(FAIL, "sockets", f"{sd} missing: nothing can reach the scheduler",
                         "check the scheduler: systemctl status infergrid-scheduler "
                         "(journalctl -u infergrid-scheduler)"))
        return out
    except PermissionError:
        out.append(Check(WARN, "sockets", f"cannot look into {d}",
                         "run as root or a member of the infergrid group"))
        return out
    if stat.S_IMODE(sst.st_mode) & 0o022:
        out.append(Check(FAIL, "sockets", f"{sd} is mode {mode_of(sst)}: others may plant "
                         "sockets in it", f"chmod go-w {sd}"))
    if not os.access(sd, os.X_OK):
        out.append(Check(WARN, "sockets", f"cannot look into {sd} ({mode_of(sst)})",
                         "run as root or a member of the infergrid group"))
        return out
    for name, role in SOCKETS:
        out.append(_check_socket(sd / name, role, packaged=group is not None))
    return out


def _check_socket(sock: Path, role: str, packaged: bool) -> Check:
    name = sock.name
    want = ROLE_GROUPS[role] if packaged and _group_exists(ROLE_GROUPS[role]) else None
    try:
        sst = sock.stat()
    except FileNotFoundError:
        return Check(FAIL, name, f"{sock} missing: {_USERS[role]} cannot reach the scheduler",
                     "check the scheduler: systemctl status infergrid-scheduler "
                     "(journalctl -u infergrid-scheduler)")
    if not stat.S_ISSOCK(sst.st_mode):
        return Check(FAIL, name, f"{sock} is not a socket", "remove it and restart the scheduler")
    mode = stat.S_IMODE(sst.st_mode)
    sowner = f"{user_name(sst.st_uid)}:{group_name(sst.st_gid)}"
    if mode & 0o007:
        return Check(FAIL, name, f"{sock} is mode {mode_of(sst)}: any local user can connect",
                     f"chmod {'0660' if want else '0600'} {sock}; the scheduler binds it so "
                     "itself: restart it")
    if want is not None and group_name(sst.st_gid) != want:
        return Check(FAIL, name, f"{sock} is {sowner}: group should be {want} (only "
                     f"{_USERS[role]} may use it)", f"restart the scheduler; check that its "
                     f"unit has SupplementaryGroups={want}")
    if want is not None and mode & 0o060 != 0o060:
        return Check(FAIL, name, f"{sock} is mode {mode_of(sst)}: members of {want} cannot "
                     "use it", f"chmod 0660 {sock}")
    if want is None and mode & 0o070:
        return Check(WARN, name, f"{sock} is mode {mode_of(sst)}: group {group_name(sst.st_gid)}"
                     " may use it (one user runs every daemon here)", f"chmod 0600 {sock}")
    if role.startswith("control") and not os.access(sock, os.R_OK | os.W_OK):
        return Check(WARN, name, f"{sock} {sowner} {mode_of(sst)}: you may not use it",
                     f"run as root, or add yourself: adduser $USER {want or sowner}")
    return Check(OK, name, f"{sock} {sowner} {mode_of(sst)}")


def check_state_dir(state: Path, user: str | None) -> Check:
    """The state dir exists and the daemons' user (``user``, else the caller) may write it."""
    try:
        st = state.stat()
    except FileNotFoundError:
        parent = next((p for p in state.parents if p.is_dir()), Path("/"))
        if os.access(parent, os.W_OK):
            return Check(WARN, "state-dir", f"{state} does not exist yet",
                         "it is made at first start (systemd: StateDirectory=)")
        return Check(FAIL, "state-dir", f"{state} does not exist and {parent} is not "
                     "writable", f"mkdir -p {state} and give it to the daemons' user")
    except PermissionError:
        return Check(WARN, "state-dir", f"cannot look at {state}",
                     "run as root or a member of the infergrid group")
    if not stat.S_ISDIR(st.st_mode):
        return Check(FAIL, "state-dir", f"{state} is not a directory", f"remove {state}")
    owner = f"{user_name(st.st_uid)}:{group_name(st.st_gid)}"
    if user is not None and os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return Check(FAIL, "state-dir", f"user {user} does not exist",
                         "reinstall the package (its postinst makes the user)")
        mode = stat.S_IMODE(st.st_mode)
        writable = ((st.st_uid == pw.pw_uid and mode & 0o200)
                    or (st.st_gid == pw.pw_gid and mode & 0o020) or mode & 0o002)
        if not writable:
            return Check(FAIL, "state-dir", f"{state} is {owner} {mode_of(st)}: {user} cannot "
                         "write it (runtime tenant settings would be lost)",
                         f"chown -R {user} {state}")
        return Check(OK, "state-dir", f"{state} {owner} {mode_of(st)}, writable by {user}")
    if not os.access(state, os.W_OK | os.X_OK):
        return Check(FAIL, "state-dir", f"{state} is {owner} {mode_of(st)}: not writable",
                     f"chown {user_name(os.geteuid())} {state}, or point state_dir elsewhere")
    return Check(OK, "state-dir", f"{state} {owner} {mode_of(st)}, writable")
