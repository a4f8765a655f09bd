"""Front-door reconciliation: a peer's full-state ``Hello`` replaces the core's view of it.

Kept apart from ``core.py`` because it is the one place that rewrites the
core's books wholesale rather than one event at a time; it uses the core's
internals on purpose (it is part of the core, in its own file to keep each
module one concept).  See ``SchedulerCore.peer_hello`` for the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import protocol as p

if TYPE_CHECKING:
    from .core import SchedulerCore, Send

QUEUED = "queued"
INFLIGHT = "inflight"


def frontdoor_hello(core: SchedulerCore, peer: str, hello: p.Hello, now: float) -> list[Send]:
    """Apply a front door's Hello: drop what it no longer lists, apply its undelivered
    Dones, adopt what it has in flight and what it holds queued (through admission)."""
    out: list[Send] = []
    listed = {r.request_id for r in hello.queued} | {r.request_id for r in hello.inflight} \
        | {d.request_id for d in hello.undelivered_done}
    for rid in list(core._by_peer.get(peer, {})):
        rec = core._records[rid]
        if rid not in listed:
            if rec.state == QUEUED:
                core._drop_queued(rec, now)
            else:
                core._end_lost(rec, now)
    for d in hello.undelivered_done:
        core._finish(d, now)
    for r in hello.inflight:
        adopt_inflight(core, peer, r, now)
    for q in hello.queued:
        out += adopt_queued(core, peer, q, now)
    return out


def adopt_inflight(core: SchedulerCore, peer: str, r: p.InflightRecord, now: float) -> None:
    """A request the front door is relaying: in flight here too, charging nothing new."""
    rec = core._records.get(r.request_id)
    if rec is not None and rec.peer != peer:
        core._unlink(rec)
        rec.peer = peer
        core._link(rec)
    if rec is not None and rec.state == INFLIGHT:
        if rec.engine_id != r.engine_id:  # retried on another engine by the front door
            core._free(rec)
            core._to_inflight(rec, r.engine_id, now)
        core.progress(r.request_id, r.completion_tokens)
        return
    if rec is not None:  # queued here, running there: dispatched by an earlier Hello's view
        core.policy.on_dispatch(rec.req)
        rec.req.charged_prompt, rec.req.charged_completion = rec.req.prompt_tokens, 0
        core._dequeue(rec)
        core._to_inflight(rec, r.engine_id, now)
        core.progress(r.request_id, r.completion_tokens)
        return
    lost = core._finished.get(r.request_id)
    if r.request_id in core._finished and lost is None:
        return  # finished already; this list is older than its Done
    if lost is not None:  # it came back after we gave it up: charges are as they were
        del core._finished[r.request_id]
        rec = lost
        c = core._count(rec.req.tenant)  # undo the stats _end_lost recorded
        c.tokens_in -= rec.req.charged_prompt
        c.tokens_out -= rec.req.charged_completion
        rec.peer = peer
    else:  # dispatched by a previous scheduler, which charged it
        req = core._request(r.request_id, r.tenant, r.model, r.prompt_tokens,
                            r.max_tokens, 0, 0.0)
        req.charged_prompt = req.prompt_tokens
        req.charged_completion = max(0, r.completion_tokens)
        rec = core._new_record(req, peer, max(0, r.completion_tokens))
    core._link(rec)
    core._to_inflight(rec, r.engine_id, now)
    core.progress(r.request_id, r.completion_tokens)

def adopt_queued(core: SchedulerCore, peer: str, q: p.QueuedRecord, now: float) -> list[Send]:
    """A request the front door holds unanswered: queued here in its place."""
    rec = core._records.get(q.request_id)
    if rec is not None and rec.state == QUEUED:
        if rec.peer != peer:
            core._unlink(rec)
            rec.peer = peer
            core._link(rec)
        return []
    if rec is not None:  # we dispatched it, the Dispatch never arrived: back in line
        core._free(rec)
        core._unlink(rec)
        core.policy.on_done(rec.req, 0, 0)  # refund what the dispatch charged
        rec.req.charged_prompt = rec.req.charged_completion = 0
        rec.completion_tokens = 0
        rec.peer = peer
        core._enqueue(rec, now)
        return []
    # Unknown here: it arrived while the scheduler was away, or the old scheduler
    # admitted it and died.  Admission is checked again, so a quota holds across
    # a scheduler restart (at worst a request is charged twice, never zero times).
    core._finished.pop(q.request_id, None)
    return core._admit(peer, q, now)
