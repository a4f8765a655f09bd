"""Who may use which scheduler socket (DESIGN §10): one socket per peer role.

The honest way to know a peer's role over ZeroMQ IPC is the socket it came in
on, never what its ``Hello`` claims: so the scheduler binds one socket per role
and gives each a mode and group that admit only that role.  Two layers:

* **the file system** (the gate): ``connect()`` on a Unix socket needs write
  permission on its file, so ``frontdoor.sock`` is 0660 to group
  ``infergrid-frontdoor``, ``supervisor.sock`` to ``infergrid-supervisor``,
  ``control.sock`` to ``infergrid-admin`` and ``control-ro.sock`` (read-only
  commands) to ``infergrid``.  A role group is used only where it exists and
  the scheduler belongs to it (the packaged units); elsewhere (``infergrid
  serve``: every daemon is one user) a socket is 0600, its owner's alone.
* **the peer's credentials** (the check behind the gate): libzmq reads
  ``SO_PEERCRED`` of every IPC connection and hands it over as each message's
  ``Peer-Address`` property (``localhost:UID:GID:PID``).  ``admits`` checks that
  uid against the same rule as the file's mode, so a socket file whose mode was
  widened by hand still refuses a stranger.  ZAP or ``zmq.FD`` offer nothing
  per peer on IPC; this property is per connection and cannot be forged by the
  peer (the kernel fills it in at ``connect``).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

log = logging.getLogger("infergrid.transport")

#: the group that may use each socket, where the group exists and the binder is in it
ROLE_GROUPS: dict[str, str] = {
    "frontdoor": "infergrid-frontdoor",
    "supervisor": "infergrid-supervisor",
    "control": "infergrid-admin",
    "control-ro": "infergrid",
}
#: how long a uid's group list is trusted (a user removed from a group loses access soon)
GROUPS_TTL_S = 10.0


@dataclass(frozen=True)
class PeerCred:
    """A connected process as the kernel saw it at ``connect()``."""

    uid: int
    gid: int
    pid: int


def peer_cred(frame: zmq.Frame) -> PeerCred | None:
    """The credentials libzmq attached to a message received on an IPC socket.

    ``None`` where the platform gives none (no ``SO_PEERCRED``): then the file
    permissions are the only gate, as they are for every Unix socket.
    """
    try:
        addr = frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    parts = str(addr).rsplit(":", 3)
    if len(parts) != 4:
        return None
    try:
        return PeerCred(uid=int(parts[1]), gid=int(parts[2]), pid=int(parts[3]))
    except ValueError:
        return None


def role_gid(role: str) -> int | None:
    """The gid of ``role``'s group if it exists and this process belongs to it, else None."""
    name = ROLE_GROUPS[role]
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return None
    if gid == os.getegid() or gid in os.getgroups():
        return gid
    # The package made the group but this process is not in it (a unit without the
    # SupplementaryGroups=, or a user namespace that maps it to nobody): say so, since
    # the peers of that role will then find the socket closed to them.
    log.warning("group %s exists but this process (uid %d) is not in it: the %s socket is "
                "0600, this user's alone", name, os.geteuid(), role)
    return None


@dataclass(frozen=True)
class SocketAccess:
    """The mode and group a role's socket gets, and the uids it admits."""

    role: str
    gid: int | None  # None: the binder's own, mode 0600

    @classmethod
    def for_role(cls, role: str) -> SocketAccess:
        return cls(role=role, gid=role_gid(role))

    @property
    def mode(self) -> int:
        return 0o600 if self.gid is None else 0o660

    def apply(self, path: Path) -> None:
        """Give the bound socket file its mode and group (the group first: never wider)."""
        os.chmod(path, 0o600)
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, self.mode)

    def admits(self, cred: PeerCred | None, groups: GroupCache | None = None) -> bool:
        """Whether a peer with ``cred`` is one the socket's mode is meant for: root, the
        binder's own user, or (where the socket has a group) a member of that group."""
        if cred is None:
            return True  # no credentials on this platform: the file mode is the gate
        if cred.uid in (0, os.geteuid()):
            return True
        if self.gid is None:
            return False
        if cred.gid == self.gid:
            return True
        return self.gid in (groups or _GROUPS).of(cred.uid, cred.gid)


class GroupCache:
    """``getgrouplist`` per uid, kept ``GROUPS_TTL_S`` (it reads the group database)."""

    def __init__(self, ttl_s: float = GROUPS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[int, tuple[float, frozenset[int]]] = {}

    def of(self, uid: int, gid: int) -> frozenset[int]:
        now = time.monotonic()
        hit = self._cache.get(uid)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            groups = frozenset(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except (KeyError, OSError):
            groups = frozenset({gid})
        self._cache[uid] = (now, groups)
        return groups


_GROUPS = GroupCache()
