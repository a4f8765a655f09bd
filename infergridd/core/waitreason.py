"""Why a queued request waits: the answer ``infergridctl trace`` shows, in words.

Read-only, like ``snapshot.py``: it looks at the books, the engine table and the
same dispatch rule the core applies (``Dispatcher.may_dispatch``), and names who
holds the seats and who is ahead under the policy.  Called by the scheduler daemon
when a request is queued instead of dispatched at once, so its trace keeps the
reason as it was at that moment (the queue changes right after).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .record import Record, RecordState

if TYPE_CHECKING:
    from .core import SchedulerCore

#: at most this many tenants named in one list (the rest summed as "+N others")
NAMED = 4
#: above this many queued requests for the model, the explanation comes from per-tenant
#: counts (cost: tenants) instead of a walk over every request (cost: the queue; about
#: 3 ms at 5000 queued, too much to spend on each of hundreds of submits a second)
DETAIL_MAX = 200


def explain(core: SchedulerCore, request_id: str) -> str:
    """One line: why ``request_id`` is queued now, or "" when it is not queued."""
    rec = core.books.get(request_id)
    if rec is None or rec.state is not RecordState.QUEUED:
        return ""
    model, tenant = rec.model, rec.tenant
    detail = core.books.model_queued(model) <= DETAIL_MAX
    engines = core.engine_table.ready(model)
    parts: list[str] = []
    if not engines:
        info = next((m for m in core.model_infos() if m.name == model), None)
        state = info.state if info else "unknown"
        why = f": {info.reason}" if info and info.reason else ""
        parts.append(f"no ready engine for {model} (model {state}{why})")
    else:
        holders = _holders(core, model) if detail else Counter(
            {t.name: t.inflight for t in core.tenant_stats() if t.inflight})
        seats = []
        room_but_held = []
        for e in sorted(engines, key=lambda e: e.status.engine_id):
            eid = e.status.engine_id
            cap, n = core.engine_window(eid) or (0, 0)
            if core.may_dispatch(model, eid, tenant):
                continue
            if n >= cap:
                seats.append(f"{eid} {n}/{cap}")
            else:
                room_but_held.append(f"{eid} {n}/{cap}")
        if seats:
            parts.append(f"engine seats full ({', '.join(seats)}) held by {_named(holders)}"
                         + ("" if detail else " (in flight over all models)"))
        if room_but_held:
            parts.append(f"room on {', '.join(room_but_held)} but the headroom rule holds "
                         f"{tenant} (at or over its share while a lighter tenant is around)")
        if not seats and not room_but_held:
            parts.append("an engine has room: dispatched at the next decision")
    if detail:
        ahead = _ahead(core, rec)
        if ahead:
            parts.append(f"ahead of it under {core.cfg.scheduler.policy}: {_named(ahead)}")
    else:
        queued = Counter({t.name: t.queued for t in core.tenant_stats() if t.queued})
        parts.append(f"{core.books.model_queued(model)} queued for {model} (over all models "
                     f"per tenant: {_named(queued)})")
    counters = _counters(core, model, tenant, detail)
    if counters:
        parts.append(counters)
    return "; ".join(parts)


def _ahead(core: SchedulerCore, mine: Record) -> Counter[str]:
    """Queued requests for the same model that the policy serves first: under ``vtc``
    another tenant's with a lower counter, or the tenant's own older ones; under
    ``fifo``/``token_bucket`` everything older."""
    vtc = core.cfg.scheduler.policy == "vtc"
    my_counter = core.policy.counter(mine.tenant) if vtc else 0.0
    out: Counter[str] = Counter()
    for r in core.books.records.values():
        if r is mine or r.state is not RecordState.QUEUED or r.model != mine.model:
            continue
        older = r.order_key() < mine.order_key()
        if r.tenant == mine.tenant:
            if older:
                out[f"{r.tenant} (own, older)"] += 1
        elif (r.band < mine.band) or (
                r.band == mine.band and (
                    core.policy.counter(r.tenant) < my_counter if vtc else older)):
            out[r.tenant] += 1
    return out


def _holders(core: SchedulerCore, model: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in core.books.records.values():
        if r.state is RecordState.INFLIGHT and r.model == model:
            out[r.tenant] += 1
    return out


def _counters(core: SchedulerCore, model: str, tenant: str, detail: bool = True) -> str:
    """Under ``vtc``: the counters of the tenants that have work for ``model`` (over all
    models when not ``detail``; the lowest is served first; weights are already applied)."""
    if core.cfg.scheduler.policy != "vtc":
        return ""
    names = ({r.tenant for r in core.books.records.values() if r.model == model} if detail
             else {t.name for t in core.tenant_stats() if t.queued or t.inflight}) | {tenant}
    vals = sorted((core.policy.counter(n), n) for n in names)
    shown = ", ".join(f"{n} {c:.0f}" for c, n in vals[:NAMED + 1])
    return f"counters (lowest served first): {shown}"


def _named(counts: Counter[str]) -> str:
    if not counts:
        return "nobody"
    top = counts.most_common()
    shown = ", ".join(f"{t} {n}" for t, n in top[:NAMED])
    rest = sum(n for _, n in top[NAMED:])
    return shown + (f" (+{rest} more)" if rest else "")
