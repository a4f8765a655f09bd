"""What the scheduler daemon records for operators, beside scheduling: usage accounting
(``usage_store``) and request traces (``traces``).

One object with one call per thing the daemon already handles (a Submit, the sends
the core returned, Progress, Done, Cancel, a Hello, a heartbeat's acknowledgement,
housekeeping), so ``main.py`` gains a line per event rather than the bookkeeping.
It decides nothing: the core's decisions arrive here as the ``Send``s it returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import protocol as p
from ..core.core import SchedulerCore, Send
from ..core.waitreason import explain
from .traces import Trace, TraceRing, standing_of
from .usage_store import UsageStore, done_event, reject_event

log = logging.getLogger("infergrid.scheduler")

#: how often old usage rows and remembered ids are pruned (ids arrive at up to ~1000/s)
PRUNE_EVERY_S = 60.0
#: a Hello with more held requests than this gets no per-request wait explanation
EXPLAIN_MAX = 100


class Observer:
    def __init__(self, core: SchedulerCore, state_dir: Path,
                 wall: Callable[[], float] = time.time) -> None:
        self.core = core
        self.wall = wall
        self.traces = TraceRing()
        self.usage = UsageStore(state_dir)
        self._pruned_at = 0.0
        self._unlisted: list[str] = []  # hello() -> hello_applied()

    # ------------------------------------------------------------------ request events
    def submitted(self, peer: str, s: p.RequestHeader, sends: list[Send],
                  via: str = "submit", why: bool = True) -> None:
        """After ``core.submit``: the request's trace, and why it waits if it was queued
        (neither dispatched nor rejected by ``sends``)."""
        now = self.wall()
        t = self.traces.add(Trace(
            request_id=s.request_id, tenant=s.tenant, model=s.model, frontdoor=peer,
            prompt_estimate=s.prompt_tokens, max_tokens=s.max_tokens, priority=s.priority,
            via=via, received=s.submitted_at or now))
        if t.admitted is not None:
            return  # a repeat of a request it already has
        answered = any(isinstance(x.msg, p.Reject) and x.msg.request_id == s.request_id
                       for x in sends)
        if answered:
            return
        t.admitted = t.queued = now
        if why and not any(isinstance(x.msg, p.Dispatch) and x.msg.request_id == s.request_id
                           for x in sends):
            try:
                t.waited_because = explain(self.core, s.request_id)
            except Exception:  # noqa: BLE001 - an explanation must never stop scheduling
                log.exception("cannot explain why %s waits", s.request_id)

    def leased(self, s: p.Submit) -> None:
        """A request a front door sent on a slot lease: dispatched when it arrived."""
        t = self.traces.get(s.request_id)
        if t is not None and t.dispatched is None:
            t.dispatched, t.engine_id, t.queue_wait_s = t.queued or self.wall(), s.engine_id, 0.0

    def sent(self, sends: Iterable[Send]) -> None:
        """The core's Dispatches and Rejects, whatever caused them."""
        now = None
        for s in sends:
            msg = s.msg
            if isinstance(msg, p.Dispatch):
                t = self.traces.get(msg.request_id)
                if t is not None:
                    now = now or self.wall()
                    t.dispatched, t.engine_id = now, msg.engine_id
                    t.engine_priority, t.queue_wait_s = msg.engine_priority, msg.queue_wait_s
                    t.standing = standing_of(msg.engine_priority)
            elif isinstance(msg, p.Reject):
                now = now or self.wall()
                t = self.traces.get(msg.request_id)
                if t is not None:
                    t.rejected, t.reject_code, t.reject_reason = now, msg.code, msg.reason
                    self.usage.add(reject_event(msg.request_id, now, t.tenant, t.model))
                else:
                    log.debug("reject of %s not counted: no trace of it", msg.request_id)

    def progress(self, items: Iterable[tuple[str, int]]) -> None:
        now = None
        for rid, tokens in items:
            t = self.traces.get(rid)
            if t is None or tokens <= t.completion_so_far:
                continue
            now = now or self.wall()
            if t.first_token is None:
                t.first_token = now
            t.last_token, t.completion_so_far = now, tokens

    def done(self, peer: str, d: p.Done) -> None:
        """Count it (idempotent by request id) and close its trace."""
        now = self.wall()
        t = self.traces.get(d.request_id)
        tenant, model = (t.tenant, t.model) if t is not None else ("", "")
        if d.tenant or tenant:
            self.usage.add(done_event(d, now, tenant, model), peer, d.seq)
        else:
            log.debug("Done of %s not counted: tenant unknown", d.request_id)
        if t is not None and t.done is None:
            t.done, t.outcome, t.error = now, d.outcome, d.error
            if d.completion_tokens > t.completion_so_far:
                # the front door drops its last Progress batch at the end: the tail's
                # tokens arrive with the Done, right after the last one was sent
                t.last_token, t.completion_so_far = now, d.completion_tokens
            t.prompt_tokens, t.completion_tokens, t.ttft_s = (
                d.prompt_tokens, d.completion_tokens, d.ttft_s)

    def cancelled(self, request_id: str) -> None:
        t = self.traces.get(request_id)
        if t is not None and t.dispatched is None and t.cancelled is None:
            t.cancelled = self.wall()

    def hello(self, peer: str, hello: p.Hello) -> None:
        """Before ``core.peer_hello``: the Dones a front door could not deliver (counted
        once, whether or not this scheduler counted them before a restart), and traces
        for the requests it held while the scheduler was away."""
        for d in hello.undelivered_done:
            self.done(peer, d)
        # what it held before and no longer lists: the core ends those in flight LOST (its
        # front door died with them; their Done will never come), see hello_applied
        listed = {r.request_id for r in (*hello.queued, *hello.inflight, *hello.undelivered_done)}
        self._unlisted = [rid for rid in self.core.books.of_peer(peer) if rid not in listed]
        for q in hello.queued:
            self.traces.add(Trace(
                request_id=q.request_id, tenant=q.tenant, model=q.model, frontdoor=peer,
                prompt_estimate=q.prompt_tokens, max_tokens=q.max_tokens, priority=q.priority,
                via="hello", received=q.submitted_at,
                notes=["held by the front door across a scheduler restart"]))

    def hello_applied(self, hello: p.Hello, sends: list[Send]) -> None:
        """After ``core.peer_hello``: the held requests that were not refused are admitted
        (explained one by one only for a short list: each explanation reads the queue)."""
        for q in hello.queued:
            self.submitted("", q, sends, via="hello", why=len(hello.queued) <= EXPLAIN_MAX)
        self._close_lost(self._unlisted, "its front door came back without it")
        self._unlisted = []

    def peer_gone(self, peer: str) -> None:
        """After ``core.peer_gone``: a front door went silent (SIGKILLed: its successor is a
        new peer) and the requests it held in flight ended lost; their traces say so."""
        self._close_lost([t.request_id for t in self.traces.recent(len(self.traces))
                          if t.frontdoor == peer], "its front door went silent")

    def _close_lost(self, request_ids: list[str], why: str) -> None:
        """A request its front door lost ends in the books, not with a Done (that died with
        the front door): its trace is closed as ``lost`` (before, ``infergridctl trace``
        showed it in flight for ever, like a lost Done)."""
        now = self.wall()
        for rid in request_ids:
            t = self.traces.get(rid)
            if t is not None and t.done is None and self.core.books.lost(rid) is not None:
                t.done, t.outcome = now, p.Outcome.LOST
                t.notes.append(f"{why} (it died holding it): ended lost, the seat freed, "
                               "what was charged kept")

    # ------------------------------------------------------------------ daemon duties
    def ack(self, peer: str, applied_seq: int) -> int:
        """Acknowledge only Dones whose usage is on disk (see ``usage_store``)."""
        return self.usage.ack(peer, applied_seq)

    def housekeeping(self) -> None:
        self.usage.flush()
        now = self.wall()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self.usage.prune(now)
            self._pruned_at = now

    def close(self) -> None:
        self.usage.close()
