"""Receiving on a ZeroMQ socket straight from the event loop's reader callback.

``zmq.asyncio``'s ``await sock.recv_multipart()`` in a receiver task costs, per
message, a future, its callbacks and two trips through the event loop (the socket's
handler resolves the future, then the task runs); a never-blocking send through the
asyncio wrapper makes a future too.  On the request path that is paid four times
per request (Submit, Dispatch, each end), each time by a process that was asleep
(issue 17's hop breakdown, ``bench/results/frontdoor-hops.md``).  ``Drain`` reads
instead in the loop's reader callback on the socket's file descriptor and hands
each message to a plain function, and ``sockets.send_nowait`` sends on a drained
socket without a future.

The ZeroMQ file descriptor is edge-triggered: it signals that the socket's state
*may* have changed, and any operation on the socket (a send too) can consume that
signal.  So a wake-up reads until ``EAGAIN``, and after a send ``kick`` checks
``EVENTS`` and schedules a read if a message is waiting (else it could sit there
until the next message woke us).  A handler runs in the callback, so it must not
block; an exception in it is logged and the next message is read.  No task means
no cancelled ``recv`` that could lose a message (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger("infergrid.transport")

#: at most this many messages per wake-up, then the rest next iteration: a flood from
#: one socket must not starve the loop's other work (timers, HTTP)
BATCH = 256


class Drain:
    """Read ``sock`` in the event loop's reader callback; ``handle(frames)`` per message."""

    def __init__(self, sock: zmq.asyncio.Socket, handle: Callable[[list[Any]], None],
                 copy: bool = True) -> None:
        #: the same libzmq socket without the asyncio wrapper (never registered with the loop)
        self.raw = zmq.Socket.shadow(sock.underlying)
        self.handle = handle
        self.copy = copy
        self._loop = asyncio.get_running_loop()
        self._fd = self.raw.FD
        self._pending = False
        self.closed = False
        # send_nowait finds it here (zmq's __setattr__ would take the name for an option)
        object.__setattr__(sock, "_ig_drain", self)
        self._sock = sock
        self._loop.add_reader(self._fd, self._ready)
        self.kick(force=True)  # anything that arrived before the reader was there

    def kick(self, force: bool = False) -> None:
        """After an operation that may have eaten the descriptor's edge: read soon if a
        message is waiting (once per loop iteration)."""
        if self._pending or self.closed:
            return
        try:
            waiting = force or bool(self.raw.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        except zmq.ZMQError:
            return
        if waiting:
            self._pending = True
            self._loop.call_soon(self._ready)

    def _ready(self) -> None:
        self._pending = False
        if self.closed:
            return
        recv, events = self.raw.recv_multipart, self.raw.getsockopt
        for _ in range(BATCH):
            try:
                # asked first: a recv that finds nothing raises zmq.Again, and making that
                # exception costs more than the question (once per wake-up, at least)
                if not events(zmq.EVENTS) & zmq.POLLIN:
                    return
                frames = recv(zmq.NOBLOCK, copy=self.copy)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:  # closed under us
                log.debug("drain stopped: %s", exc)
                self.close()
                return
            try:
                self.handle(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the reader
                log.exception("error handling a message")
        self.kick(force=True)  # more than a batch: go on next iteration

    def close(self) -> None:
        """Stop reading (the socket itself is its owner's to close)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, OSError, RuntimeError):  # loop closed, fd gone
            pass
        if self._sock.__dict__.get("_ig_drain") is self:
            del self._sock.__dict__["_ig_drain"]


def drain_of(sock: zmq.asyncio.Socket) -> Drain | None:
    """The ``Drain`` reading ``sock``, if any."""
    d: Drain | None = getattr(sock, "__dict__", {}).get("_ig_drain")
    return d
