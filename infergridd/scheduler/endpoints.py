"""The scheduler's sockets, one per peer role, and what each role may say (DESIGN §10).

A peer's role is the socket its messages arrive on — ``frontdoor.sock`` or
``supervisor.sock``, each of whose mode admits only that role
(``transport/access.py``) — never the role its ``Hello`` claims.  So a front
door (internet-facing, the first thing an attacker owns) can neither pose as a
supervisor (and point an engine's endpoint at itself) nor send a supervisor's
messages, and it cannot reach the control socket at all.  Here:

* ``screen``: one received message → the message to handle, or why it is
  dropped or refused (its identity must carry the socket's prefix, so names
  from two sockets never collide in the peer table; its type must be one the
  role sends; a ``Hello`` must name the socket's role, from a process the
  socket admits, and loses any state that belongs to the other role);
* ``PeerSockets`` / ``ControlSockets``: bind the sockets, route a send to the
  socket its peer is on, and hand each message over with the role and the
  credentials it came with.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from .. import protocol as p
from ..config import Dirs
from ..transport.access import PeerCred, SocketAccess, peer_cred
from ..transport.drain import Drain
from ..transport.sockets import bind_router, send_nowait

log = logging.getLogger("infergrid.scheduler")


@dataclass(frozen=True)
class PeerRole:
    role: str  # "frontdoor" | "supervisor": ``Hello.role`` and ``access.ROLE_GROUPS``
    prefix: str  # every identity on this role's socket starts with it
    sends: tuple[type[p.Message], ...]  # what this role may send after its Hello


PEER_ROLES: dict[str, PeerRole] = {
    "frontdoor": PeerRole("frontdoor", "fd-",
                          (p.Heartbeat, p.Submit, p.Progress, p.Done, p.Cancel,
                           p.Leases)),
    "supervisor": PeerRole("supervisor", "sv-",
                           (p.Heartbeat, p.EngineUpdate, p.EngineCommandResult)),
}


class Refused(Exception):
    """A Hello the scheduler answers with ``Welcome(accepted=False, reason)``."""


def role_of(name: str) -> str | None:
    """The role whose socket a peer name can only have come from (by its prefix)."""
    for r in PEER_ROLES.values():
        if name.startswith(r.prefix):
            return r.role
    return None


def screen(role: str, name: str, msg: p.Message, cred: PeerCred | None,
           access: SocketAccess) -> p.Message | None:
    """What the daemon may act on, given the socket (``role``) a message came in on.

    Returns ``None`` for a message to drop (logged here); raises ``Refused`` for a
    Hello to refuse.  A Hello comes back with the role's foreign state emptied.
    """
    spec = PEER_ROLES[role]
    if name.startswith("\x00"):
        # libzmq's name for a connection whose identity a reconnect took over
        # (ROUTER_HANDOVER): what was still queued on it arrives after the peer's
        # new Hello, which resent its full state; stale, expected, not an attack
        log.debug("dropped %s left on a replaced connection of the %s socket",
                  type(msg).__name__, role)
        return None
    if not name.startswith(spec.prefix):
        log.warning("dropped %s from %r on the %s socket: identities there start with %r",
                    type(msg).__name__, name, role, spec.prefix)
        return None
    if isinstance(msg, p.Hello):
        if msg.role != role:
            raise Refused(f"this socket is for {role}s, not {msg.role}s")
        if not access.admits(cred):
            raise Refused(f"uid {cred.uid if cred else '?'} may not connect as {role}")
        if role == "frontdoor":
            return msgspec.structs.replace(msg, engines=[])
        return msgspec.structs.replace(msg, queued=[], inflight=[], undelivered_done=[])
    if not isinstance(msg, spec.sends):
        log.warning("dropped %s from %s: a %s does not send that", type(msg).__name__,
                    name, role)
        return None
    return msg


class PeerSockets:
    """``frontdoor.sock`` and ``supervisor.sock``: one ROUTER per role."""

    def __init__(self, ctx: zmq.asyncio.Context, dirs: Dirs) -> None:
        paths = {"frontdoor": dirs.frontdoor_sock, "supervisor": dirs.supervisor_sock}
        self.access = {role: SocketAccess.for_role(role) for role in PEER_ROLES}
        self.socks = {role: bind_router(ctx, paths[role], role) for role in PEER_ROLES}

    def send(self, name: str, frames: list[bytes], what: str) -> None:
        """Send to peer ``name`` on the socket its prefix says it is on (never blocks)."""
        role = role_of(name)
        if role is None:
            log.warning("no socket for peer %r; dropped %s", name, what)
            return
        send_nowait(self.socks[role], [name.encode(), *frames], what, log,
                    f"peer {name} not reachable")

    def serve(self, role: str, handle: Callable[[str, p.Message, PeerCred | None], None]
              ) -> Drain:
        """Receive on ``role``'s socket in the loop's reader callback (``transport/drain.py``:
        no task, one loop trip less per message); each decoded message goes to ``handle``."""
        return Drain(self.socks[role], functools.partial(_deliver, handle), copy=False)

    async def receive(self, role: str,
                      handle: Callable[[str, p.Message, PeerCred | None], None]) -> None:
        """Receive on ``role``'s socket for ever; each decoded message goes to ``handle``."""
        sock = self.socks[role]
        while True:
            _deliver(handle, await sock.recv_multipart(copy=False))

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)


def _deliver(handle: Callable[[str, p.Message, PeerCred | None], None],
             frames: list[zmq.Frame]) -> None:
    """One received message: [identity, body] decoded and handed to ``handle``."""
    if len(frames) != 2:
        log.warning("dropped a message with %d frames", len(frames))
        return
    name = frames[0].bytes.decode("utf-8", "replace")
    try:
        msg = p.decode(frames[1].bytes)
    except p.ProtocolError as exc:
        log.warning("dropped undecodable message from %s: %s", name, exc)
        return
    # the sender's credentials gate a Hello only (``screen``): not read for anything else
    cred = peer_cred(frames[1]) if isinstance(msg, p.Hello) else None
    try:
        handle(name, msg, cred)
    except Exception:  # noqa: BLE001 - one bad message must not stop the hub
        log.exception("error handling %s from %s", type(msg).__name__, name)


class ControlSockets:
    """``control.sock`` (every command; admins) and ``control-ro.sock`` (read-only ones)."""

    #: socket role → whether commands that change something are allowed there
    WRITABLE = {"control": True, "control-ro": False}

    def __init__(self, ctx: zmq.asyncio.Context, dirs: Dirs) -> None:
        paths = {"control": dirs.control_sock, "control-ro": dirs.control_ro_sock}
        self.access = {role: SocketAccess.for_role(role) for role in self.WRITABLE}
        self.socks = {role: bind_router(ctx, paths[role], role) for role in self.WRITABLE}

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)
