"""``Books``: every request the core knows, where it is, and the counts that follow.

One place owns a request's state and everything that mirrors it, so they
cannot drift apart: the record itself (``Record.state``), the index by front
door, per-tenant, per-model and per-engine counts, the queue deadlines, and
the structures of the other pieces that track the same request — the
policy's queue (a ``QUEUED`` record is in it, nothing else is), the headroom
rules' in-flight view and the tenant's quota charge.  Each state change is
one method here (``enqueue``, ``start``, ``drop_queued``, ``free``,
``end_lost``, ...), so a reader finds every effect of a transition in one body.

Finished requests are remembered (bounded, oldest forgotten first) so that a
late duplicate ``Done`` or ``Submit`` is harmless; a request that ended
``LOST`` keeps its record there, so a real ``Done`` arriving later can still
correct its charges.

Nothing here iterates a set: dicts keep insertion order, and that order
(records, per-peer ids, per-model waiting lines) is part of the core's
deterministic behaviour.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ..config import Config
from .headroom import Headroom
from .policy import Policy
from .quotas import Quotas
from .record import Record, RecordState
from .tenants import TenantRegistry

#: how many finished request ids are remembered, so a late duplicate Done is harmless
FINISHED_MEMORY = 100_000

QUEUED, INFLIGHT, LOST = RecordState.QUEUED, RecordState.INFLIGHT, RecordState.LOST


@dataclass
class TenantCounts:
    """What ``tenant_stats`` reports for one tenant."""

    queued: int = 0
    inflight: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Books:
    """Records, their indexes and counts, and the transitions between states."""

    def __init__(self, cfg: Config, tenants: TenantRegistry, policy: Policy,
                 headroom: Headroom, quotas: Quotas) -> None:
        self.cfg = cfg
        self.tenants = tenants
        self.policy = policy
        self.headroom = headroom
        self.quotas = quotas
        #: request id -> its record, for every queued or in-flight request (insertion order)
        self.records: dict[str, Record] = {}
        self._by_peer: dict[str, dict[str, None]] = {}  # peer -> its request ids (ordered)
        self._finished: OrderedDict[str, Record | None] = OrderedDict()  # LOST keeps its record
        self._counts: dict[str, TenantCounts] = {}
        self._engine_inflight: dict[str, int] = {}
        self._engine_reserved: dict[str, int] = {}  # slots leased to front doors (leases.py)
        self._model_queued: dict[str, int] = {}
        self._model_inflight: dict[str, int] = {}
        self._model_waiting: dict[str, OrderedDict[str, float]] = {}  # oldest first
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0

    # ================================================================== lookups
    def get(self, request_id: str) -> Record | None:
        return self.records.get(request_id)

    def known(self, request_id: str) -> bool:
        """Queued, in flight, or finished not long ago: a repeated Submit changes nothing."""
        return request_id in self.records or request_id in self._finished

    def finished(self, request_id: str) -> bool:
        return request_id in self._finished

    def lost(self, request_id: str) -> Record | None:
        """The record of a finished request that ended ``LOST``; None otherwise."""
        return self._finished.get(request_id)

    def of_peer(self, peer: str) -> list[str]:
        """The ids ``peer`` holds, in the order it sent them (a copy: safe to change books)."""
        return list(self._by_peer.get(peer, {}))

    def new_record(self, request_id: str, tenant: str, model: str, prompt_tokens: int,
                   max_tokens: int, priority: int, submitted_at: float, peer: str = "",
                   completion_tokens: int = 0) -> Record:
        """A fresh record (not yet in the books) in the tenant's current band."""
        return Record(
            request_id=request_id, tenant=tenant, model=model,
            prompt_tokens=max(0, prompt_tokens), max_tokens=max(0, max_tokens),
            priority=priority, submitted_at=submitted_at, band=self.tenants.band(tenant),
            peer=peer, completion_tokens=completion_tokens,
        )

    # ================================================================== counts
    def counts(self, tenant: str) -> TenantCounts:
        """The tenant's counts, created empty on first use."""
        c = self._counts.get(tenant)
        if c is None:
            c = self._counts[tenant] = TenantCounts()
        return c

    def counts_or_none(self, tenant: str) -> TenantCounts | None:
        return self._counts.get(tenant)

    def forget_counts(self, tenant: str) -> None:
        """A removed tenant's counts go, unless it still has requests in flight."""
        c = self._counts.get(tenant)
        if c is not None and not c.inflight:
            del self._counts[tenant]

    def queued_n(self, tenant: str) -> int:
        c = self._counts.get(tenant)
        return c.queued if c is not None else 0

    def count_reject(self, tenant: str, code: str) -> None:
        r = self.counts(tenant).rejected
        r[code] = r.get(code, 0) + 1

    def engine_inflight(self, engine_id: str) -> int:
        return self._engine_inflight.get(engine_id, 0)

    def engine_occupied(self, engine_id: str) -> int:
        """In flight plus leased: what dispatch decisions count as taken on an engine."""
        return self._engine_inflight.get(engine_id, 0) + self._engine_reserved.get(engine_id, 0)

    def engine_reserved(self, engine_id: str) -> int:
        return self._engine_reserved.get(engine_id, 0)

    def reserve(self, engine_id: str, n: int) -> None:
        """``n`` slots more (or fewer, negative) held by front-door leases on the engine."""
        v = self._engine_reserved.get(engine_id, 0) + n
        if v > 0:
            self._engine_reserved[engine_id] = v
        else:
            self._engine_reserved.pop(engine_id, None)

    def model_queued(self, model: str) -> int:
        return self._model_queued.get(model, 0)

    def model_inflight(self, model: str) -> int:
        return self._model_inflight.get(model, 0)

    def queued_models(self) -> list[str]:
        """Models with a request queued, in the order they first had one."""
        return list(self._model_queued)

    def oldest_waiting(self, model: str) -> float | None:
        """When the oldest request queued for ``model`` was enqueued (core clock)."""
        waiting = self._model_waiting.get(model)
        return next(iter(waiting.values())) if waiting else None

    def waiting_by_model(self) -> list[tuple[str, Mapping[str, float]]]:
        """Each model's queued ids with their enqueue times, oldest first (live mappings)."""
        return list(self._model_waiting.items())

    def due_deadlines(self, now: float) -> Iterator[Record]:
        """Queued records whose queue deadline has passed; each is yielded once."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq, rid = heapq.heappop(self._deadlines)
            rec = self.records.get(rid)
            if rec is None or rec.state is not QUEUED or rec.seq != seq:
                continue
            yield rec

    # ================================================================== index
    def link(self, rec: Record) -> None:
        """Known here, under its front door."""
        self.records[rec.request_id] = rec
        self._by_peer.setdefault(rec.peer, {})[rec.request_id] = None

    def unlink(self, rec: Record) -> None:
        rid = rec.request_id
        self.records.pop(rid, None)
        mine = self._by_peer.get(rec.peer)
        if mine is not None:
            mine.pop(rid, None)
            if not mine:
                del self._by_peer[rec.peer]

    def move_to_peer(self, rec: Record, peer: str) -> None:
        """Another front door holds it now (its Hello lists it)."""
        self.unlink(rec)
        rec.peer = peer
        self.link(rec)

    def forget_peer(self, peer: str) -> None:
        self._by_peer.pop(peer, None)

    def remember_finished(self, request_id: str, lost: Record | None) -> None:
        self._finished[request_id] = lost
        self._finished.move_to_end(request_id)
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def settle_lost(self, request_id: str) -> None:
        """A ``LOST`` request's real Done arrived: a plain finished id now (its place in
        the memory unchanged)."""
        self._finished[request_id] = None

    def forget_finished(self, request_id: str) -> None:
        """It is back (a front door lists it again): no longer a duplicate."""
        self._finished.pop(request_id, None)

    # ================================================================== transitions
    def enqueue(self, rec: Record, now: float) -> None:
        """-> ``QUEUED``: in line in the policy, counted, with its queue deadline."""
        self._seq += 1
        rec.seq = self._seq
        rec.state, rec.engine_id, rec.enqueued_at = QUEUED, "", now
        self.link(rec)
        self.policy.enqueue(rec)
        self.counts(rec.tenant).queued += 1
        m = rec.model
        self._model_queued[m] = self._model_queued.get(m, 0) + 1
        self._model_waiting.setdefault(m, OrderedDict())[rec.request_id] = now
        t = self.tenants.get(rec.tenant)
        deadline_s = (t.queue_deadline_s if t else 0.0) or self.cfg.scheduler.queue_deadline_s
        if deadline_s > 0:
            heapq.heappush(self._deadlines, (now + deadline_s, rec.seq, rec.request_id))

    def _dequeue(self, rec: Record) -> None:
        """Counts for a request leaving the queue (the policy is told by the caller)."""
        self.counts(rec.tenant).queued -= 1
        m = rec.model
        self._model_queued[m] -= 1
        if not self._model_queued[m]:
            del self._model_queued[m]
        waiting = self._model_waiting.get(m)
        if waiting is not None:
            waiting.pop(rec.request_id, None)
            if not waiting:
                del self._model_waiting[m]

    def unqueue(self, rec: Record) -> None:
        """``QUEUED`` -> gone, charging and refunding nothing (the caller settles it)."""
        self.policy.remove(rec.request_id)
        self._dequeue(rec)
        self.unlink(rec)

    def drop_queued(self, rec: Record, now: float) -> None:
        """``QUEUED`` -> gone, unserved: out of the queue, quota tokens back."""
        self.unqueue(rec)
        self.quotas.refund(rec.tenant, rec.quota_tokens, now)

    def start(self, rec: Record, engine_id: str, now: float) -> None:
        """``QUEUED`` -> ``INFLIGHT`` on ``engine_id``: the policy charges the prompt estimate."""
        self.policy.on_dispatch(rec)
        rec.charged_prompt, rec.charged_completion = rec.prompt_tokens, 0
        self._dequeue(rec)
        self.to_inflight(rec, engine_id, now)

    def to_inflight(self, rec: Record, engine_id: str, now: float) -> None:
        """-> ``INFLIGHT``: holds a slot on ``engine_id`` (charges are the caller's)."""
        rec.state, rec.engine_id, rec.dispatched_at = INFLIGHT, engine_id, now
        self.counts(rec.tenant).inflight += 1
        m = rec.model
        self.headroom.started(m, rec.tenant, rec.request_id)
        self._model_inflight[m] = self._model_inflight.get(m, 0) + 1
        self._engine_inflight[engine_id] = self._engine_inflight.get(engine_id, 0) + 1

    def free(self, rec: Record) -> None:
        """The slot an ``INFLIGHT`` request held on its engine is free again."""
        c = self.counts(rec.tenant)
        c.inflight -= 1
        m, eid = rec.model, rec.engine_id
        self.headroom.ended(m, rec.tenant, rec.request_id, eid)
        self._model_inflight[m] -= 1
        if not self._model_inflight[m]:
            del self._model_inflight[m]
        self._engine_inflight[eid] -= 1
        if not self._engine_inflight[eid]:
            del self._engine_inflight[eid]

    def move_engine(self, rec: Record, engine_id: str, now: float) -> None:
        """``INFLIGHT`` on another engine (the front door retried it there)."""
        self.free(rec)
        self.to_inflight(rec, engine_id, now)

    def requeue(self, rec: Record, peer: str, now: float) -> None:
        """``INFLIGHT`` -> ``QUEUED``: its Dispatch never reached ``peer``; back in line,
        with what the dispatch charged refunded."""
        self.free(rec)
        self.unlink(rec)
        self.policy.on_done(rec, 0, 0)
        rec.charged_prompt = rec.charged_completion = 0
        rec.completion_tokens = 0
        rec.peer = peer
        self.enqueue(rec, now)

    def end_lost(self, rec: Record) -> None:
        """``INFLIGHT`` -> ``LOST``: its front door is gone.  The slot is free, what was
        charged stays; a real Done arriving later (the front door comes back) still
        corrects it."""
        self.free(rec)
        self.unlink(rec)
        c = self.counts(rec.tenant)
        c.tokens_in += rec.charged_prompt
        c.tokens_out += rec.charged_completion
        rec.state = LOST
        self.remember_finished(rec.request_id, rec)

    def revive_lost(self, request_id: str, peer: str) -> Record | None:
        """A ``LOST`` request its front door lists again: out of the finished memory, the
        stats ``end_lost`` recorded undone, charges as they were.  The caller puts it in
        flight.  None when ``request_id`` did not end lost."""
        rec = self._finished.get(request_id)
        if rec is None:
            return None
        del self._finished[request_id]
        c = self.counts(rec.tenant)
        c.tokens_in -= rec.charged_prompt
        c.tokens_out -= rec.charged_completion
        rec.peer = peer
        return rec

    def drop_peer(self, peer: str, now: float) -> None:
        """A front door is gone: its queue is dropped, its in-flight requests end lost."""
        for rid in self.of_peer(peer):
            rec = self.records[rid]
            if rec.state is QUEUED:
                self.drop_queued(rec, now)
            else:
                self.end_lost(rec)
        self.forget_peer(peer)
