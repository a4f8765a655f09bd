"""The front door's link to the scheduler, and its waiting room.

The link owns the front door's view of every request the scheduler should
know about: queued ones (waiting for a Dispatch), in-flight ones (streaming),
and finished ones whose ``Done`` the scheduler has not acknowledged yet.
Because a ``Hello`` carries all three, nothing is lost while the scheduler is
away or restarting: requests keep arriving and wait here, streams keep
running, and the next ``Welcome`` brings the new scheduler up to date.

The handshake, heartbeats and reconnecting are the shared peer link's
(``transport.peerlink``); this module is only the front door's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import zmq.asyncio

from .. import protocol as p
from ..transport import hops
from ..transport.peerlink import PeerLink

PROGRESS_EVERY_S = 0.1
#: slot leases are for a quiet front door: with this many requests of its own in
#: flight or waiting it is busy, gives back the leases it holds and asks for none
#: (a lease it would not use only keeps a slot from the scheduler's dispatches; under
#: concurrency the scheduler orders: bench/results/frontdoor-lease.md) ...
LEASE_BUSY_AT = 4
#: ... until it has been down to this many for this long (apart, so it does not flap)
LEASE_QUIET_AT = 1
LEASE_QUIET_S = 0.25


class FrontdoorLink(PeerLink):
    ROLE = "frontdoor"
    IDENTITY_PREFIX = "fd-"
    TICK_S = PROGRESS_EVERY_S  # progress is batched on the timer's tick
    log = logging.getLogger("infergrid.frontdoor.link")

    def __init__(self, ctx: zmq.asyncio.Context, sock_path: Path, instance: str,
                 on_snapshot: Callable[[p.Snapshot], None], leases: int = 0) -> None:
        super().__init__(ctx, sock_path, instance)
        self.on_snapshot = on_snapshot
        #: slot leases wanted per model (``frontdoor.fast_path``; core/leases.py), and the
        #: unused ones held, per model; valid only under the scheduler that granted them
        self.leases_wanted = leases
        self._pool: dict[str, list[p.LeaseInfo]] = {}
        self._pool_open = False  # closed from a Hello until its Welcome
        self._busy = False  # too busy for leases: asked for none (LEASE_BUSY_AT)
        self._busy_seen = 0.0  # when it last had more than LEASE_QUIET_AT requests
        self._quiet_timer: asyncio.TimerHandle | None = None
        self.fast_dispatches = 0
        self.queued: dict[str, tuple[p.QueuedRecord, asyncio.Future[p.Dispatch | p.Reject]]] = {}
        self.inflight: dict[str, p.InflightRecord] = {}
        self.unacked: dict[int, p.Done] = {}
        self._progress: dict[str, int] = {}
        self._first: dict[str, int] = {}  # first tokens, sent at the end of the iteration
        self._first_pending = False
        self._done_seq = 0
        #: Submits of leased requests, sent once their engine POST is written (below)
        self._leased_submits: dict[str, p.Submit] = {}

    # ------------------------------------------------------------------ the peer link's hooks
    def send_hello(self) -> None:
        self._flush_first()  # the Progress goes before the Hello that supersedes it
        self._flush_progress()
        # the scheduler drops our leases when it reads the Hello; grants it sent before
        # that are not to be used (they arrive before its Welcome)
        self._pool.clear()
        self._pool_open = False
        super().send_hello()

    def _fill_hello(self, hello: p.Hello) -> None:
        hello.queued = [rec for rec, _ in self.queued.values()]
        hello.inflight = list(self.inflight.values())
        hello.undelivered_done = list(self.unacked.values())
        hello.leases = 0 if self._busy else self.leases_wanted

    def _on_welcome(self, msg: p.Welcome) -> None:
        super()._on_welcome(msg)
        self._pool_open = self.welcomed

    def _digest(self) -> dict[str, int]:
        return {"queued": len(self.queued), "inflight": len(self.inflight)}

    def _state_note(self) -> str:
        return f" ({len(self.queued)} queued, {len(self.inflight)} in flight here)"

    def _on_tick(self) -> None:
        self._flush_progress()

    def _on_heartbeat(self, hb: p.Heartbeat) -> None:
        for seq in [s for s in self.unacked if s <= hb.ack_done_seq]:
            del self.unacked[seq]

    def _on_role_message(self, msg: p.Message) -> bool:
        if isinstance(msg, (p.Dispatch, p.Reject)):
            self._resolve(msg.request_id, msg)
        elif isinstance(msg, p.Leases):
            self._on_leases(msg)
        elif isinstance(msg, p.Snapshot):
            self._check_instance(msg.instance)
            self.on_snapshot(msg)
        else:
            return False
        return True

    def send(self, msg: p.Message) -> None:
        """As the peer link's, but after the leased Submits not sent yet: the scheduler
        must book a leased request before any later word of it (its Done, a lease given
        back, a Hello)."""
        if self._leased_submits:
            self._flush_submits()
        super().send(msg)

    def _flush_submits(self) -> None:
        subs = list(self._leased_submits.values())
        self._leased_submits.clear()
        for sub in subs:
            self.send(sub)

    def close(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
        super().close()

    # ------------------------------------------------------------------ slot leases
    def _on_leases(self, msg: p.Leases) -> None:
        """Grants go to the pool (from this scheduler, after its Welcome); every revoked id
        goes back: one already used had its Submit sent first on this same pipe, so the
        scheduler has booked it before it reads the return."""
        if msg.instance != self.scheduler_instance:
            return  # an old scheduler's: it died with them
        if msg.revoke:
            gone = set(msg.revoke)
            for model, pool in self._pool.items():
                self._pool[model] = [x for x in pool if x.lease_id not in gone]
            self.send(p.Leases(instance=self.instance, revoke=msg.revoke))
        if msg.grant and self._pool_open:
            if self._busy:  # granted before it read our "none": back at once
                self.send(p.Leases(instance=self.instance,
                                   revoke=[g.lease_id for g in msg.grant]))
                return
            for g in msg.grant:
                self._pool.setdefault(g.model, []).append(g)

    def _load_changed(self) -> None:
        """Busy ↔ quiet for leases: the scheduler is told at the edges only, with the
        leases held given back when it turns busy (``LEASE_BUSY_AT``); quiet again takes
        ``LEASE_QUIET_S`` at ``LEASE_QUIET_AT`` or less (closed-loop clients dip between
        their requests: it must not flap)."""
        if not self.leases_wanted:
            return
        load = self._load()
        if load > LEASE_QUIET_AT:
            if self._busy:
                self._busy_seen = time.monotonic()
            elif load >= LEASE_BUSY_AT:
                self._busy, self._busy_seen = True, time.monotonic()
                held = [x.lease_id for pool in self._pool.values() for x in pool]
                self._pool.clear()
                if self.welcomed:  # else the next Hello says it (and drops the leases)
                    self.send(p.Leases(instance=self.instance, revoke=held, wants=0))
        elif self._busy and self._quiet_timer is None:
            self._quiet_timer = asyncio.get_running_loop().call_later(LEASE_QUIET_S,
                                                                      self._maybe_quiet)

    def _load(self) -> int:
        """This process's own requests: in flight or waiting for a dispatch."""
        return len(self.inflight) + len(self.queued)

    def _maybe_quiet(self) -> None:
        self._quiet_timer = None
        if not self._busy or self._load() > LEASE_QUIET_AT:
            return  # the next dip starts the timer again
        wait = self._busy_seen + LEASE_QUIET_S - time.monotonic()
        if wait > 0:
            self._quiet_timer = asyncio.get_running_loop().call_later(wait, self._maybe_quiet)
            return
        self._busy = False
        if self.welcomed:
            self.send(p.Leases(instance=self.instance, wants=self.leases_wanted))

    def give_up_leases(self) -> None:
        """Draining: a Hello asking for none, so the scheduler frees the slots we hold now
        rather than when this process has gone silent."""
        if self.leases_wanted:
            self.leases_wanted = 0
            self.send_hello()

    def take_lease(self, model: str, tenant: str) -> p.LeaseInfo | None:
        """A lease on ``model`` for ``tenant`` to use now, if one is held that does not
        name it heavy, the scheduler is there and nothing of ours waits for it (then it
        is the scheduler's to order)."""
        pool = self._pool.get(model)
        if not pool or self.queued or self._busy or not self.connected:
            return None
        for i in range(len(pool) - 1, -1, -1):
            if tenant not in pool[i].heavy:
                return pool.pop(i)
        return None

    def start_leased(self, rec: p.QueuedRecord, lease: p.LeaseInfo, band: int) -> p.Dispatch:
        """In flight at once on ``lease``; the Submit naming it tells the scheduler, which
        charges it as any dispatch.  Exactly one Done follows (``finish``)."""
        rid = rec.request_id
        self.inflight[rid] = p.InflightRecord(
            request_id=rid, tenant=rec.tenant, model=rec.model, engine_id=lease.engine_id,
            prompt_tokens=rec.prompt_tokens, max_tokens=rec.max_tokens,
            dispatched_at=time.time(), lease_id=lease.lease_id)
        self._load_changed()
        # sent at the end of this loop iteration, after the engine POST is written: the
        # send (and the scheduler it wakes) is off the path to the first token; every
        # other message of ours goes after it (``send``), the Done included
        if not self._leased_submits:
            asyncio.get_running_loop().call_soon(self._flush_submits)
        self._leased_submits[rid] = p.Submit(
            request_id=rid, tenant=rec.tenant, model=rec.model, prompt_tokens=rec.prompt_tokens,
            max_tokens=rec.max_tokens, priority=rec.priority, submitted_at=rec.submitted_at,
            lease_id=lease.lease_id, engine_id=lease.engine_id)
        self.fast_dispatches += 1
        if hops.ON:
            hops.mark(rid, "submit_sent")
            hops.mark(rid, "dispatch_rx")
        # not the light tier: nobody knows yet whether this tenant floods (with N front
        # doors a flooder's first N requests can all come on leases at once), and a light
        # request dispatched after it must be able to take its seat (the scheduler names
        # the tier its engine preempts: core/leases.py); nothing waits behind it now
        prio = (band * 1000 + lease.tier) * lease.priority_sign if lease.priority_sign \
            else None
        return p.Dispatch(request_id=rid, engine_id=lease.engine_id, endpoint=lease.endpoint,
                          api_key=lease.api_key, engine_priority=prio)

    # ------------------------------------------------------------------ request path
    async def submit(self, rec: p.QueuedRecord) -> p.Dispatch | p.Reject:
        """Queue ``rec`` with the scheduler and wait for its answer.

        Cancelling the caller (the client went away) withdraws the request.
        """
        fut: asyncio.Future[p.Dispatch | p.Reject] = asyncio.get_running_loop().create_future()
        self.queued[rec.request_id] = (rec, fut)
        self._load_changed()
        self.send(p.Submit(request_id=rec.request_id, tenant=rec.tenant, model=rec.model,
                           prompt_tokens=rec.prompt_tokens, max_tokens=rec.max_tokens,
                           priority=rec.priority, submitted_at=rec.submitted_at))
        if hops.ON:
            hops.mark(rec.request_id, "submit_sent")
        try:
            return await fut
        except asyncio.CancelledError:
            if self.queued.pop(rec.request_id, None) is not None:
                self.send(p.Cancel(request_id=rec.request_id))
                self._load_changed()
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
        self._load_changed()

    def progress(self, request_id: str, completion_tokens: int) -> None:
        """Tokens streamed so far; batched every ``PROGRESS_EVERY_S``, except the first.

        The first token goes at once: the scheduler holds heavy tenants' dispatches
        while a light tenant's request waits for it (core/headroom.py), and a
        100 ms batching delay would be 100 ms of slots left idle.  "At once" is the
        end of the event loop's iteration: the first tokens of every stream that got
        one in the same iteration share one ``Progress`` (under load, one message
        instead of dozens; microseconds later, not 100 ms).
        """
        rec = self.inflight.get(request_id)
        first = rec is not None and not rec.completion_tokens and completion_tokens > 0
        if rec is not None:
            rec.completion_tokens = completion_tokens
        if first:
            # sent at the end of this loop iteration, with every other stream's first
            # token that came in the same iteration: one message, not one per stream
            self._progress.pop(request_id, None)
            self._first[request_id] = completion_tokens
            if not self._first_pending:
                self._first_pending = True
                asyncio.get_running_loop().call_soon(self._flush_first)
            return
        if request_id in self._first:  # not sent yet: the newer count goes instead
            self._first[request_id] = completion_tokens
        else:
            self._progress[request_id] = completion_tokens

    def _flush_first(self) -> None:
        self._first_pending = False
        if self._first:
            items = list(self._first.items())
            self._first.clear()
            self.send(p.Progress(items=items))

    def finish(self, request_id: str, outcome: str, prompt_tokens: int,
               completion_tokens: int, ttft_s: float | None = None, error: str = "",
               engine_failed: bool = False) -> None:
        """Exactly one ``Done`` per dispatched request; kept until acknowledged."""
        rec = self.inflight.pop(request_id, None)
        if rec is None:
            return
        self._load_changed()
        self._progress.pop(request_id, None)
        self._first.pop(request_id, None)  # the Done carries the count (as for _progress)
        self._send_done(p.Done(request_id=request_id, outcome=outcome,
                               prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                               engine_id=rec.engine_id, tenant=rec.tenant, model=rec.model,
                               ttft_s=ttft_s, error=error, engine_failed=engine_failed,
                               lease_id=rec.lease_id))

    def _send_done(self, done: p.Done) -> None:
        """Number ``done``, keep it until the scheduler's heartbeat acknowledges it, send it."""
        self._done_seq += 1
        done.seq = self._done_seq
        self.unacked[done.seq] = done
        self.send(done)

    def _resolve(self, request_id: str, msg: p.Dispatch | p.Reject) -> None:
        if hops.ON:
            hops.mark(request_id, "dispatch_rx", self.rx_at)
        entry = self.queued.pop(request_id, None)
        if entry is not None and isinstance(msg, p.Reject):
            self._load_changed()
        if entry is not None:
            _, fut = entry
            if not fut.done():
                fut.set_result(msg)
                return
        if isinstance(msg, p.Dispatch) and request_id not in self.inflight:
            # Nobody waits for it (the client left): end it so the slot is freed.
            self._send_done(p.Done(request_id=request_id, outcome=p.Outcome.CANCELLED,
                                   engine_id=msg.engine_id))

    def _flush_progress(self) -> None:
        if self._progress:
            items = list(self._progress.items())
            self._progress.clear()
            self.send(p.Progress(items=items))

    async def wait_acked(self, timeout_s: float) -> None:
        """At shutdown: give the scheduler a moment to acknowledge the last Dones."""
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
