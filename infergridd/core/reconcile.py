"""``Reconciler``: a front door's full-state ``Hello`` replaces the core's view of it.

Kept apart from the books because it is the one place that rewrites them
wholesale rather than one event at a time.  The rules (``SchedulerCore.peer_hello``):
a request the front door lists as queued is queued here, in its place by
``submitted_at`` (one the core thought dispatched never reached it: back in
line, its charge refunded); one it lists in flight is in flight here on that
engine, charging nothing new (the scheduler that dispatched it charged it);
its undelivered Dones are applied; what the core held for it that it does
not list is gone.  Requests it held while the scheduler was away go through
admission again, so a restart is no way around a quota.
"""

from __future__ import annotations

from .. import protocol as p
from .admission import Admission
from .books import Books
from .charging import Charging
from .record import RecordState
from .send import Send


class Reconciler:
    """Applies front-door Hellos to the books."""

    def __init__(self, books: Books, charging: Charging, admission: Admission) -> None:
        self.books = books
        self.charging = charging
        self.admission = admission

    def frontdoor_hello(self, peer: str, hello: p.Hello, now: float) -> list[Send]:
        """Apply a front door's Hello: drop what it no longer lists, apply its undelivered
        Dones, adopt what it has in flight and what it holds queued (through admission)."""
        books = self.books
        out: list[Send] = []
        listed = {r.request_id for r in hello.queued} | {r.request_id for r in hello.inflight} \
            | {d.request_id for d in hello.undelivered_done}
        for rid in books.of_peer(peer):
            rec = books.records[rid]
            if rid not in listed:
                if rec.state is RecordState.QUEUED:
                    books.drop_queued(rec, now)
                else:
                    books.end_lost(rec)
        for d in hello.undelivered_done:
            # one sent on a slot lease: its Submit, the only charge, may never have arrived
            self.charging.finish(d, now, prompt_charged=not d.lease_id)
        for r in hello.inflight:
            self.adopt_inflight(peer, r, now)
        for q in hello.queued:
            out += self.adopt_queued(peer, q, now)
        return out

    def adopt_inflight(self, peer: str, r: p.InflightRecord, now: float) -> None:
        """A request the front door is relaying: in flight here too, charging nothing new."""
        books = self.books
        rec = books.get(r.request_id)
        if rec is not None and rec.peer != peer:
            books.move_to_peer(rec, peer)
        if rec is not None and rec.state is RecordState.INFLIGHT:
            if rec.engine_id != r.engine_id:  # retried on another engine by the front door
                books.move_engine(rec, r.engine_id, now)
            self.charging.progress(r.request_id, r.completion_tokens)
            return
        if rec is not None:  # queued here, running there: dispatched by an earlier Hello's view
            books.start(rec, r.engine_id, now)
            self.charging.progress(r.request_id, r.completion_tokens)
            return
        if books.finished(r.request_id) and books.lost(r.request_id) is None:
            return  # finished already; this list is older than its Done
        rec = books.revive_lost(r.request_id, peer)  # back after we gave it up: charges kept
        if rec is None and r.lease_id:
            # sent on a slot lease: its Submit (the only charge) may never have reached a
            # scheduler, so it is charged here (at worst twice, never zero times)
            rec = books.new_record(r.request_id, r.tenant, r.model, r.prompt_tokens,
                                   r.max_tokens, 0, 0.0, peer)
            books.policy.on_dispatch(rec)
            rec.charged_prompt = rec.prompt_tokens
        elif rec is None:  # dispatched by a previous scheduler, which charged it
            rec = books.new_record(r.request_id, r.tenant, r.model, r.prompt_tokens,
                                   r.max_tokens, 0, 0.0, peer, max(0, r.completion_tokens))
            rec.charged_prompt = rec.prompt_tokens
            rec.charged_completion = max(0, r.completion_tokens)
        books.link(rec)
        books.to_inflight(rec, r.engine_id, now)
        self.charging.progress(r.request_id, r.completion_tokens)

    def adopt_queued(self, peer: str, q: p.QueuedRecord, now: float) -> list[Send]:
        """A request the front door holds unanswered: queued here in its place."""
        books = self.books
        rec = books.get(q.request_id)
        if rec is not None and rec.state is RecordState.QUEUED:
            if rec.peer != peer:
                books.move_to_peer(rec, peer)
            return []
        if rec is not None:  # we dispatched it, the Dispatch never arrived: back in line
            books.requeue(rec, peer, now)
            return []
        # Unknown here: it arrived while the scheduler was away, or the old scheduler
        # admitted it and died.  Admission is checked again, so a quota holds across
        # a scheduler restart (at worst a request is charged twice, never zero times).
        books.forget_finished(q.request_id)
        return self.admission.admit(peer, q, now)
