"""The front door's link to the scheduler, and its waiting room.

The link owns the front door's view of every request the scheduler should
know about: queued ones (waiting for a Dispatch), in-flight ones (streaming),
and finished ones whose ``Done`` the scheduler has not acknowledged yet.
Because a ``Hello`` carries all three, nothing is lost while the scheduler is
away or restarting: requests keep arriving and wait here, streams keep
running, and the next ``Welcome`` brings the new scheduler up to date.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .. import protocol as p
from ..zmqio import connect_dealer, send_nowait

log = logging.getLogger("infergrid.frontdoor.link")

PROGRESS_EVERY_S = 0.1
HELLO_RETRY_S = 1.0
AWAY_AFTER_S = p.HEARTBEAT_INTERVAL_S * p.HEARTBEAT_MISSES


class SchedulerLink:
    def __init__(self, ctx: zmq.asyncio.Context, sock_path: Path, instance: str,
                 on_snapshot: Callable[[p.Snapshot], None]) -> None:
        self.instance = instance
        self.identity = f"fd-{instance}"
        self.sock = connect_dealer(ctx, sock_path, self.identity.encode())
        self.on_snapshot = on_snapshot
        self.scheduler_instance = ""
        self.last_heard = 0.0
        self.last_hello = 0.0
        self.welcomed = False
        self.queued: dict[str, tuple[p.QueuedRecord, asyncio.Future[p.Dispatch | p.Reject]]] = {}
        self.inflight: dict[str, p.InflightRecord] = {}
        self.unacked: dict[int, p.Done] = {}
        self._progress: dict[str, int] = {}
        self._done_seq = 0
        self._hb_seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._refused = ""  # last refusal reason, logged once rather than every retry
        # Handshake events say when a (re)connected pipe can carry a Hello: with
        # IMMEDIATE=1 a Hello sent before that is dropped, and waiting for the
        # periodic retry would hold the first requests for up to HELLO_RETRY_S.
        self._mon = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self.welcomed and time.monotonic() - self.last_heard < AWAY_AFTER_S

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._rx(), name="link-rx"),
                       asyncio.create_task(self._monitor(), name="link-monitor"),
                       asyncio.create_task(self._timers(), name="link-timers")]
        self.send_hello()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.disable_monitor()
        self._mon.close(0)
        self.sock.close(0)

    def _send(self, msg: p.Message) -> None:
        send_nowait(self.sock, [p.encode(msg)], type(msg).__name__, log, "scheduler away")

    def send_hello(self) -> None:
        self.last_hello = time.monotonic()
        self._flush_progress()
        self._send(p.Hello(
            role="frontdoor", instance=self.instance, protocol_version=p.PROTOCOL_VERSION,
            pid=os.getpid(),
            queued=[rec for rec, _ in self.queued.values()],
            inflight=list(self.inflight.values()),
            undelivered_done=list(self.unacked.values()),
        ))

    # ------------------------------------------------------------------ request path
    async def submit(self, rec: p.QueuedRecord) -> p.Dispatch | p.Reject:
        """Queue ``rec`` with the scheduler and wait for its answer.

        Cancelling the caller (the client went away) withdraws the request.
        """
        fut: asyncio.Future[p.Dispatch | p.Reject] = asyncio.get_running_loop().create_future()
        self.queued[rec.request_id] = (rec, fut)
        self._send(p.Submit(request_id=rec.request_id, tenant=rec.tenant, model=rec.model,
                            prompt_tokens=rec.prompt_tokens, max_tokens=rec.max_tokens,
                            priority=rec.priority, submitted_at=rec.submitted_at))
        try:
            return await fut
        except asyncio.CancelledError:
            if self.queued.pop(rec.request_id, None) is not None:
                self._send(p.Cancel(request_id=rec.request_id))
            elif fut.done() and not fut.cancelled() and isinstance(fut.result(), p.Dispatch):
                # dispatched in the same instant the client left: close the books on it
                d = fut.result()
                self.started(rec, d)
                self.finish(rec.request_id, p.Outcome.CANCELLED, rec.prompt_tokens, 0)
            raise

    def started(self, rec: p.QueuedRecord, d: p.Dispatch) -> None:
        self.inflight[rec.request_id] = p.InflightRecord(
            request_id=rec.request_id, tenant=rec.tenant, model=rec.model,
            engine_id=d.engine_id, prompt_tokens=rec.prompt_tokens, max_tokens=rec.max_tokens,
            dispatched_at=time.time())

    def progress(self, request_id: str, completion_tokens: int) -> None:
        """Tokens streamed so far; batched every ``PROGRESS_EVERY_S``, except the first.

        The first token goes at once: the scheduler holds heavy tenants' dispatches
        while a light tenant's request waits for it (core/headroom.py), and a
        100 ms batching delay would be 100 ms of slots left idle.
        """
        rec = self.inflight.get(request_id)
        first = rec is not None and not rec.completion_tokens and completion_tokens > 0
        if rec is not None:
            rec.completion_tokens = completion_tokens
        if first:
            self._progress.pop(request_id, None)
            self._send(p.Progress(items=[(request_id, completion_tokens)]))
            return
        self._progress[request_id] = completion_tokens

    def finish(self, request_id: str, outcome: str, prompt_tokens: int,
               completion_tokens: int, ttft_s: float | None = None, error: str = "") -> None:
        """Exactly one ``Done`` per dispatched request; kept until acknowledged."""
        rec = self.inflight.pop(request_id, None)
        if rec is None:
            return
        self._progress.pop(request_id, None)
        self._done_seq += 1
        done = p.Done(request_id=request_id, outcome=outcome, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, engine_id=rec.engine_id,
                      tenant=rec.tenant, model=rec.model, ttft_s=ttft_s, seq=self._done_seq,
                      error=error)
        self.unacked[done.seq] = done
        self._send(done)

    # ------------------------------------------------------------------ receiving
    async def _rx(self) -> None:
        while True:
            data = await self.sock.recv()
            try:
                msg = p.decode(data)
            except p.ProtocolError as exc:
                log.warning("dropped undecodable message from the scheduler: %s", exc)
                continue
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001 - never let one message stop the link
                log.exception("error handling %s", type(msg).__name__)

    async def _monitor(self) -> None:
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
        if isinstance(msg, p.Dispatch):
            self._resolve(msg.request_id, msg)
        elif isinstance(msg, p.Reject):
            self._resolve(msg.request_id, msg)
        elif isinstance(msg, p.Heartbeat):
            self._check_instance(msg.instance)
            for seq in [s for s in self.unacked if s <= msg.ack_done_seq]:
                del self.unacked[seq]
        elif isinstance(msg, p.Snapshot):
            self._check_instance(msg.instance)
            self.on_snapshot(msg)
        elif isinstance(msg, p.Welcome):
            if not msg.accepted:
                if msg.reason != self._refused:
                    log.error("the scheduler refused this front door (retrying every %.0fs): "
                              "%s", HELLO_RETRY_S, msg.reason)
                self._refused = msg.reason
                self.welcomed = False
                return
            self._refused = ""
            if msg.instance != self.scheduler_instance:
                log.info("connected to scheduler %s (%d queued, %d in flight here)",
                         msg.instance, len(self.queued), len(self.inflight))
            self.scheduler_instance = msg.instance
            self.welcomed = True
        elif isinstance(msg, p.HelloRequired):
            self.scheduler_instance = msg.instance
            self.send_hello()
        else:
            log.warning("unexpected %s from the scheduler", type(msg).__name__)

    def _check_instance(self, instance: str) -> None:
        if instance != self.scheduler_instance and \
                time.monotonic() - self.last_hello > HELLO_RETRY_S / 2:
            log.info("scheduler is now %s (was %s); sending full state",
                     instance, self.scheduler_instance or "unknown")
            self.welcomed = False
            self.send_hello()

    def _resolve(self, request_id: str, msg: p.Dispatch | p.Reject) -> None:
        entry = self.queued.pop(request_id, None)
        if entry is not None:
            _, fut = entry
            if not fut.done():
                fut.set_result(msg)
                return
        if isinstance(msg, p.Dispatch) and request_id not in self.inflight:
            # Nobody waits for it (the client left): end it so the slot is freed.
            self._done_seq += 1
            done = p.Done(request_id=request_id, outcome=p.Outcome.CANCELLED,
                          engine_id=msg.engine_id, seq=self._done_seq)
            self.unacked[done.seq] = done
            self._send(done)

    # ------------------------------------------------------------------ timers
    async def _timers(self) -> None:
        next_hb = 0.0
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._flush_progress()
            now = time.monotonic()
            if not self.connected and now - self.last_hello >= HELLO_RETRY_S:
                self.send_hello()
            if now >= next_hb:
                next_hb = now + p.HEARTBEAT_INTERVAL_S
                self._hb_seq += 1
                self._send(p.Heartbeat(instance=self.instance, seq=self._hb_seq,
                                       digest={"queued": len(self.queued),
                                               "inflight": len(self.inflight)}))

    def _flush_progress(self) -> None:
        if self._progress:
            items = list(self._progress.items())
            self._progress.clear()
            self._send(p.Progress(items=items))

    async def wait_acked(self, timeout_s: float) -> None:
        """At shutdown: give the scheduler a moment to acknowledge the last Dones."""
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
