"""A peer's link to the scheduler: the handshake the front door and the supervisor share.

Each peer holds one DEALER, identity ``<prefix><instance>``, connected to the
scheduler's ROUTER (docs/internals.md, "Link protocol").  The scheduler may
restart at any time, so the link never assumes it is there:

* every message is sent without blocking and dropped if it cannot go; the next
  full-state ``Hello`` makes up for whatever was lost;
* a ``Hello`` goes out when the pipe (re)connects, when the scheduler answers
  ``HelloRequired`` (it does not know us), when its heartbeat or snapshot shows a
  new instance, and every ``HELLO_RETRY_S`` while not welcomed (every
  ``REFUSED_RETRY_S`` after a refusal, which is logged once per reason);
* a scheduler silent for ``AWAY_AFTER_S`` counts as away until it welcomes us again;
* heartbeats, with the role's state digest, go out only while welcomed.

Messages are read in the event loop's reader callback (``drain.Drain``: no receiver
task, so no cancelled ``recv`` that could lose a message, DESIGN §4, and one loop
trip less per message) and each goes to the role; the role's subclass supplies its state for the Hello
and the digest and handles its own messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .. import protocol as p
from . import hops
from .drain import Drain
from .sockets import connect_dealer, send_nowait

HELLO_RETRY_S = 1.0
AWAY_AFTER_S = p.HEARTBEAT_INTERVAL_S * p.HEARTBEAT_MISSES


class PeerLink(ABC):
    """The role-independent half of a peer's link; subclasses add the role's state."""

    #: ``Hello.role``; also names this peer in log lines.
    ROLE: ClassVar[Literal["frontdoor", "supervisor"]]
    #: Prepended to the instance id to make the socket identity the scheduler routes by.
    IDENTITY_PREFIX: ClassVar[str]
    #: How often the timer runs: the hello retry and the away check have this granularity.
    TICK_S: ClassVar[float] = p.HEARTBEAT_INTERVAL_S
    #: How often to say Hello again after the scheduler refused this peer.
    REFUSED_RETRY_S: ClassVar[float] = HELLO_RETRY_S
    log: ClassVar[logging.Logger]

    def __init__(self, ctx: zmq.asyncio.Context, path: Path, instance: str) -> None:
        self.instance = instance
        self.identity = f"{self.IDENTITY_PREFIX}{instance}"
        self.sock = connect_dealer(ctx, path, self.identity.encode())
        self.scheduler_instance = ""
        self.welcomed = False
        self.refused = ""  # the last refusal's reason; "" while not refused
        self.last_heard = 0.0
        self.last_hello = 0.0
        self._hb_seq = 0
        self.rx_at = 0  # when the message being handled arrived (only with hops.ON)
        self._tasks: list[asyncio.Task[None]] = []
        self._drain: Drain | None = None
        # Handshake events say when a (re)connected pipe can carry a Hello: with
        # IMMEDIATE=1 a Hello sent before that is dropped, and waiting for the
        # periodic retry would leave a new scheduler without our state (and the
        # front door's first requests waiting) for up to HELLO_RETRY_S.
        self._mon = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)

    # ------------------------------------------------------------------ the role's part
    @abstractmethod
    def _fill_hello(self, hello: p.Hello) -> None:
        """Put this role's full state into ``hello`` (it must let a new scheduler catch up)."""

    @abstractmethod
    def _digest(self) -> dict[str, int]:
        """The cheap state summary every heartbeat carries."""

    @abstractmethod
    def _on_role_message(self, msg: p.Message) -> bool:
        """Handle a message only this role understands; False if it is not one."""

    def _on_heartbeat(self, hb: p.Heartbeat) -> None:  # noqa: B027 - optional hook
        """The scheduler's heartbeat, after its instance was checked."""

    def _on_tick(self) -> None:  # noqa: B027 - optional hook
        """Periodic role work, every ``TICK_S``, before the link's own."""

    def _state_note(self) -> str:
        """Appended to the "connected to scheduler" log line."""
        return ""

    # ------------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        """Welcomed, and the scheduler was heard from within ``AWAY_AFTER_S``."""
        return self.welcomed and time.monotonic() - self.last_heard < AWAY_AFTER_S

    def tasks(self) -> list[asyncio.Task[None]]:
        """Start receiving (``Drain``), the handshake watcher and the timer (``close``
        stops them all)."""
        self._drain = Drain(self.sock, self._on_frames)
        self._tasks = [asyncio.create_task(self._watch_handshakes(), name="link-monitor"),
                       asyncio.create_task(self._timers(), name="link-timers")]
        return list(self._tasks)

    def start(self) -> None:
        """Start the link's tasks and say Hello."""
        self.tasks()
        self.send_hello()

    def close(self) -> None:
        """Cancel the link's tasks and close its sockets at once."""
        for t in self._tasks:
            t.cancel()
        if self._drain is not None:
            self._drain.close()
        self.sock.disable_monitor()
        self._mon.close(0)
        self.sock.close(0)

    async def aclose(self) -> None:
        """Like ``close``, but let the tasks finish their cancellation before the sockets go."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close()

    # ------------------------------------------------------------------ sending
    def send(self, msg: p.Message) -> None:
        """Send without blocking; a message that cannot go is dropped (see ``send_nowait``)."""
        send_nowait(self.sock, [p.encode(msg)], type(msg).__name__, self.log,
                    "scheduler not reachable")

    def send_hello(self) -> None:
        """Our full state: whatever the scheduler missed, this makes up for."""
        self.last_hello = time.monotonic()
        hello = p.Hello(role=self.ROLE, instance=self.instance,
                        protocol_version=p.PROTOCOL_VERSION, pid=os.getpid())
        self._fill_hello(hello)
        self.send(hello)

    # ------------------------------------------------------------------ receiving
    def _on_frames(self, frames: list[bytes]) -> None:
        """One message from the scheduler (called by the ``Drain``)."""
        if hops.ON:
            self.rx_at = hops.now()
        try:
            msg = p.decode(frames[-1])
        except p.ProtocolError as exc:
            self.log.warning("dropped undecodable message from the scheduler: %s", exc)
            return
        try:
            self._on_message(msg)
        except Exception:  # noqa: BLE001 - one bad message must not end the link
            self.log.exception("error handling %s", type(msg).__name__)

    async def _watch_handshakes(self) -> None:
        while True:
            frames = await self._mon.recv_multipart()
            try:
                event = parse_monitor_message(frames)["event"]
            except Exception:  # noqa: BLE001 - a malformed event is no reason to stop
                continue
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.send_hello()

    def _on_message(self, msg: p.Message) -> None:
        self.last_heard = time.monotonic()
        if isinstance(msg, p.Welcome):
            self._on_welcome(msg)
        elif isinstance(msg, p.HelloRequired):
            self.welcomed = False
            self.scheduler_instance = msg.instance
            self.send_hello()
        elif isinstance(msg, p.Heartbeat):
            self._check_instance(msg.instance)
            self._on_heartbeat(msg)
        elif not self._on_role_message(msg):
            self.log.warning("unexpected %s from the scheduler", type(msg).__name__)

    def _on_welcome(self, msg: p.Welcome) -> None:
        if not msg.accepted:
            reason = msg.reason or "no reason given"
            if reason != self.refused:
                self.log.error("the scheduler refused %s %s (retrying every %.0fs): %s",
                               self.ROLE, self.identity, self.REFUSED_RETRY_S, reason)
            self.refused = reason
            self.welcomed = False
            return
        if msg.instance != self.scheduler_instance or not self.welcomed:
            self.log.info("connected to scheduler %s%s", msg.instance, self._state_note())
        self.refused = ""
        self.scheduler_instance = msg.instance
        self.welcomed = True

    def _check_instance(self, instance: str) -> None:
        """A new scheduler instance does not know our state: say Hello (at most every half
        retry, as its heartbeat and snapshot may both show it)."""
        if instance != self.scheduler_instance and \
                time.monotonic() - self.last_hello > HELLO_RETRY_S / 2:
            self.log.info("scheduler is now %s (was %s); sending full state",
                          instance, self.scheduler_instance or "unknown")
            self.welcomed = False
            self.send_hello()

    # ------------------------------------------------------------------ timers
    async def _timers(self) -> None:
        ticks_per_beat = max(1, round(p.HEARTBEAT_INTERVAL_S / self.TICK_S))
        tick = 0
        while True:
            await asyncio.sleep(self.TICK_S)
            tick += 1
            self._on_tick()
            now = time.monotonic()
            if self.welcomed and now - self.last_heard > AWAY_AFTER_S:
                self.log.warning("no word from scheduler %s for %.0fs; saying Hello until it "
                                 "answers", self.scheduler_instance, now - self.last_heard)
                self.welcomed = False
            if not self.welcomed:
                retry = self.REFUSED_RETRY_S if self.refused else HELLO_RETRY_S
                if now - self.last_hello >= retry:
                    self.send_hello()
            elif tick % ticks_per_beat == 0:
                self._hb_seq += 1
                self.send(p.Heartbeat(instance=self.instance, seq=self._hb_seq,
                                      digest=self._digest()))
