"""The supervisor's link to the scheduler (docs/internals.md, "Link protocol").

A DEALER with identity ``sv-<instance>``.  The scheduler may restart at any
time, so the link never assumes it is there: every message to it is sent
without blocking and dropped if it cannot go (the next full-state ``Hello`` or
``EngineUpdate`` makes up for it), and a ``Hello`` goes out again whenever the
scheduler says it does not know us, shows a new instance, or has been silent
for ``HEARTBEAT_INTERVAL_S * HEARTBEAT_MISSES``.

One task receives (a cancelled ``recv`` can lose a message); commands run in
their own tasks so a slow wake never delays a heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import zmq
import zmq.asyncio

from .. import protocol as p
from ..zmqio import connect_dealer, send_nowait

log = logging.getLogger("infergrid.supervisor")

HELLO_RETRY_S = 1.0
REFUSED_RETRY_S = 5.0


class SchedulerLink:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        path: Path,
        instance: str,
        engines: Callable[[], list[p.EngineStatus]],
        on_command: Callable[[p.EngineCommand], Awaitable[p.EngineCommandResult]],
    ) -> None:
        self.instance = instance
        self.engines = engines
        self.on_command = on_command
        self.sock = connect_dealer(ctx, path, b"sv-" + instance.encode())
        self.welcomed = False
        self.refused = False
        self.scheduler_instance = ""
        self.last_rx = 0.0
        self.last_hello = 0.0
        self.seq = 0
        self._cmd_tasks: set[asyncio.Task[None]] = set()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._rx(), name="link-rx"),
                asyncio.create_task(self._beat(), name="link-beat")]

    def close(self) -> None:
        for t in self._cmd_tasks:
            t.cancel()
        self.sock.close(0)

    # ------------------------------------------------------------------ sending
    def send(self, msg: p.Message) -> None:
        """Send without blocking.  On a ``zmq.asyncio`` socket a NOBLOCK send that cannot
        go does not raise here: its future carries ``zmq.Again``, so read it there (an
        unread future exception is also logged by asyncio as an error)."""
        send_nowait(self.sock, [p.encode(msg)], type(msg).__name__, log,
                    "scheduler not reachable")

    def send_hello(self) -> None:
        self.last_hello = time.monotonic()
        self.send(p.Hello(role="supervisor", instance=self.instance,
                          protocol_version=p.PROTOCOL_VERSION, pid=os.getpid(),
                          engines=self.engines()))

    def send_update(self, gpu_total_bytes: int = 0, gpu_free_bytes: int | None = None) -> None:
        """The full engine list and the ledger's GPU figures; only once welcomed (before
        that the Hello carries the engines).  ``gpu_free_bytes`` None: the total less
        what the engines report holding."""
        if not self.welcomed:
            return
        engines = self.engines()
        if gpu_free_bytes is None:
            gpu_free_bytes = max(0, gpu_total_bytes - sum(e.memory_bytes for e in engines))
        self.send(p.EngineUpdate(instance=self.instance, engines=engines,
                                 gpu_total_bytes=gpu_total_bytes,
                                 gpu_free_bytes=gpu_free_bytes if gpu_total_bytes else 0))

    # ------------------------------------------------------------------ receiving
    async def _rx(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                msg = p.decode(frames[-1])
            except p.ProtocolError as exc:
                log.warning("dropped undecodable message from the scheduler: %s", exc)
                continue
            self.last_rx = time.monotonic()
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001 - one bad message must not end the link
                log.exception("error handling %s", type(msg).__name__)

    def _on_message(self, msg: p.Message) -> None:
        if isinstance(msg, p.Welcome):
            if not msg.accepted:
                if not self.refused:
                    log.error("the scheduler refused this supervisor: %s (retrying every %.0fs)",
                              msg.reason, REFUSED_RETRY_S)
                self.refused, self.welcomed = True, False
                return
            if msg.instance != self.scheduler_instance or not self.welcomed:
                log.info("connected to scheduler %s", msg.instance)
            self.refused, self.welcomed = False, True
            self.scheduler_instance = msg.instance
        elif isinstance(msg, p.HelloRequired):
            self.welcomed = False
            self.send_hello()
        elif isinstance(msg, p.Heartbeat):
            if msg.instance != self.scheduler_instance:
                log.info("scheduler restarted (instance %s); sending Hello", msg.instance)
                self.welcomed = False
                self.send_hello()
        elif isinstance(msg, p.EngineCommand):
            task = asyncio.create_task(self._run_command(msg), name=f"cmd-{msg.command_id}")
            self._cmd_tasks.add(task)
            task.add_done_callback(self._cmd_tasks.discard)
        else:
            log.warning("unexpected %s from the scheduler", type(msg).__name__)

    async def _run_command(self, cmd: p.EngineCommand) -> None:
        result = await self.on_command(cmd)
        self.send(result)

    # ------------------------------------------------------------------ periodic
    async def _beat(self) -> None:
        away_after = p.HEARTBEAT_INTERVAL_S * p.HEARTBEAT_MISSES
        while True:
            now = time.monotonic()
            if self.welcomed and now - self.last_rx > away_after:
                log.warning("no word from scheduler %s for %.0fs; saying Hello until it answers",
                            self.scheduler_instance, now - self.last_rx)
                self.welcomed = False
            if not self.welcomed:
                retry = REFUSED_RETRY_S if self.refused else HELLO_RETRY_S
                if now - self.last_hello >= retry:
                    self.send_hello()
            else:
                self.seq += 1
                self.send(p.Heartbeat(instance=self.instance, seq=self.seq,
                                      digest={"engines": len(self.engines())}))
            await asyncio.sleep(p.HEARTBEAT_INTERVAL_S)
