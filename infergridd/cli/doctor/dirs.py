"""The runtime directory, the scheduler's sockets and the state directory: modes and owners.

Wrong groups and modes here are what an install most often gets wrong (a
socket any local user can reach, a state dir the daemons cannot write), so
each finding says the ``chmod``/``chgrp``/``chown`` that fixes it.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from ...config import Dirs
from .check import FAIL, OK, WARN, Check, group_name, mode_of, user_name


def check_runtime_dir(dirs: Dirs, group: str | None) -> list[Check]:
    """The runtime dir (0750) and the scheduler's sockets (0660, the daemons' group)."""
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
    if group is not None and group_name(st.st_gid) != group:
        out.append(Check(FAIL, "runtime-dir", f"{d} is {owner}, mode {mode_of(st)}: group "
                         f"should be {group}", f"chgrp {group} {d} (or restart the units: "
                         "systemd's RuntimeDirectory= sets it)"))
    elif stat.S_IMODE(st.st_mode) & 0o007:
        out.append(Check(WARN, "runtime-dir", f"{d} is mode {mode_of(st)}: other users can "
                         "list it", f"chmod 0750 {d}"))
    else:
        out.append(Check(OK, "runtime-dir", f"{d} {owner} {mode_of(st)}"))
    if not os.access(d, os.X_OK):
        out.append(Check(WARN, "sockets", f"cannot look into {d} ({owner}, mode {mode_of(st)})",
                         f"run as root or a member of group {group_name(st.st_gid)}"))
        return out
    for sock, users in ((dirs.control_sock, "infergridctl"),
                        (dirs.scheduler_sock, "the front door and the supervisor")):
        name = sock.name
        try:
            sst = sock.stat()
        except FileNotFoundError:
            out.append(Check(FAIL, name, f"{sock} missing: {users} cannot reach the scheduler",
                             "check the scheduler: systemctl status infergrid-scheduler "
                             "(journalctl -u infergrid-scheduler)"))
            continue
        if not stat.S_ISSOCK(sst.st_mode):
            out.append(Check(FAIL, name, f"{sock} is not a socket",
                             "remove it and restart the scheduler"))
            continue
        mode = stat.S_IMODE(sst.st_mode)
        sowner = f"{user_name(sst.st_uid)}:{group_name(sst.st_gid)}"
        want_group = group or group_name(st.st_gid)
        if mode & 0o007:
            out.append(Check(FAIL, name, f"{sock} is mode {mode_of(sst)}: any local user can "
                             "connect", f"chmod 0660 {sock}; the scheduler binds it 0660 — "
                             "check its UMask="))
        elif mode & 0o060 != 0o060:
            out.append(Check(FAIL, name, f"{sock} is mode {mode_of(sst)}: members of "
                             f"{want_group} cannot use it", f"chmod 0660 {sock}"))
        elif group_name(sst.st_gid) != want_group:
            out.append(Check(FAIL, name, f"{sock} is {sowner}: group should be {want_group}",
                             f"chgrp {want_group} {sock}; check the scheduler's Group="))
        elif name == "control.sock" and not os.access(sock, os.R_OK | os.W_OK):
            out.append(Check(WARN, name, f"{sock} {sowner} {mode_of(sst)}: you may not use it",
                             f"run as root, or add yourself: adduser $USER {want_group}"))
        else:
            out.append(Check(OK, name, f"{sock} {sowner} {mode_of(sst)}"))
    return out


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
                         f"chown -R {user}:{user} {state}")
        return Check(OK, "state-dir", f"{state} {owner} {mode_of(st)}, writable by {user}")
    if not os.access(state, os.W_OK | os.X_OK):
        return Check(FAIL, "state-dir", f"{state} is {owner} {mode_of(st)}: not writable",
                     f"chown {user_name(os.geteuid())} {state}, or point state_dir elsewhere")
    return Check(OK, "state-dir", f"{state} {owner} {mode_of(st)}, writable")
