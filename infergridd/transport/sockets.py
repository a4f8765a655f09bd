"""ZeroMQ sockets configured the one way InferGrid uses them (DESIGN §4).

Each option here guards against a real failure mode: ``ROUTER_MANDATORY`` makes
an unroutable send raise instead of vanishing, ``ROUTER_HANDOVER`` lets a
reconnecting peer take over its identity, bounded high-water marks keep a dead
peer from eating memory, ``LINGER=0`` keeps shutdown from hanging, and
``IMMEDIATE`` stops a DEALER from queueing into a pipe that is not connected.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import zmq
import zmq.asyncio

from ..config import Dirs
from ..runlock import RunLock
from .access import SocketAccess
from .drain import drain_of

HWM = 100_000
ZMTP_HEARTBEAT_IVL_MS = 1000
ZMTP_HEARTBEAT_TIMEOUT_MS = 5000


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ZMTP_HEARTBEAT_TIMEOUT_MS)


class BindLock(RunLock):
    """The scheduler's lock (``runlock.py``), held for the life of the binding process.

    Taken *before* a stale socket file is unlinked: with two schedulers, the
    second would otherwise unlink and silently steal the first one's path.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, "scheduler")


def bind_router(ctx: zmq.asyncio.Context, path: Path, role: str | None = None,
                ) -> zmq.asyncio.Socket:
    """Bind a ROUTER on a Unix socket path (caller holds the BindLock).

    ``role`` (``access.ROLE_GROUPS``) gives the file the mode and group that admit
    only that role; without one it is 0600, the binder's alone.  The file is created
    0600 (umask) and only then opened to its group, so it is never wider, even briefly.
    """
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    old = os.umask(0o177)
    try:
        sock.bind(Dirs.ipc(path))
    finally:
        os.umask(old)
    if role is None:
        os.chmod(path, 0o600)
    else:
        SocketAccess.for_role(role).apply(path)
    return sock


def connect_dealer(
    ctx: zmq.asyncio.Context, path: Path, identity: bytes, immediate: bool = True
) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.IMMEDIATE, 1 if immediate else 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.connect(Dirs.ipc(path))
    return sock


def send_nowait(
    sock: zmq.asyncio.Socket,
    frames: list[bytes],
    what: str,
    log: logging.Logger,
    on_unreachable: str = "peer not reachable",
) -> None:
    """Send without ever blocking the event loop; a message that cannot go is dropped.

    On a ``zmq.asyncio`` socket a NOBLOCK send that cannot go does not raise here:
    its future carries ``zmq.Again`` (or ``EHOSTUNREACH`` on a ROUTER), so it is
    read in a callback — an unread future exception would also be logged by
    asyncio as an error.  Dropping is safe by design: peers resend full state.  A
    socket a ``Drain`` reads (``drain.py``) is sent on directly, without a future, and
    the drain is told (a send can eat the descriptor's edge that announced a message).
    """
    d = drain_of(sock)
    if d is not None:
        send = d.raw.send  # what send_multipart does, without its per-call checks
        try:
            for f in frames[:-1]:  # a ROUTER's identity: refused here if unroutable
                send(f, zmq.NOBLOCK | zmq.SNDMORE)
            send(frames[-1], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # Again, EHOSTUNREACH (ROUTER_MANDATORY), closed
            _log_send_error(log, what, exc, on_unreachable)
        d.kick()
        return
    try:
        fut = sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.ZMQError as exc:  # e.g. a closed socket
        _log_send_error(log, what, exc, on_unreachable)
        return
    fut.add_done_callback(lambda f: _sent(f, log, what, on_unreachable))


def _sent(fut: asyncio.Future[object], log: logging.Logger, what: str, unreachable: str) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        _log_send_error(log, what, exc, unreachable)


def _log_send_error(log: logging.Logger, what: str, exc: BaseException, unreachable: str) -> None:
    if isinstance(exc, zmq.Again) or (
        isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH
    ):
        log.debug("%s; dropped %s", unreachable, what)
    else:
        log.warning("send of %s failed: %s", what, exc)
