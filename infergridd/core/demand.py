"""Between the core's books and residency: per-model demand, and the 503s it implies.

Part of ``SchedulerCore`` (it reads and drops the core's queued records on
purpose), kept in its own file so that ``core.py`` stays about requests and
``residency.py`` stays a planner that knows nothing of records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import protocol as p
from .residency import ModelView

if TYPE_CHECKING:
    from .core import SchedulerCore, Send


def model_views(core: SchedulerCore) -> list[ModelView]:
    """Every model's engines and demand, configured ones first, for ``Residency.plan``."""
    names = [m.name for m in core.cfg.models]
    names += [m for m in core._by_model if m not in names]
    out = []
    for name in names:
        waiting = core._model_waiting.get(name)
        oldest = next(iter(waiting.values())) if waiting else None
        out.append(ModelView(name, core._views(name), core._model_queued.get(name, 0),
                             core._model_inflight.get(name, 0), oldest))
    return out


def reject_unservable(core: SchedulerCore, now: float) -> list[Send]:
    """503 for queued requests whose model failed to load or was unloaded (all of
    them), or that waited ``load_deadline_s`` for a model that is still not up."""
    out: list[Send] = []
    deadline = core.cfg.scheduler.residency.load_deadline_s
    for model, waiting in list(core._model_waiting.items()):
        views = core._views(model)
        if any(v.status.state == p.EngineState.READY
               and core.residency.dispatchable(model, v.status.engine_id) for v in views):
            continue
        refused = core.residency.refusal(model, views)
        cutoff = now if refused is not None else now - deadline
        if next(iter(waiting.values())) > cutoff:
            continue
        if refused is None:
            why, retry = core.residency.wait_info(model, now)
            refused = (f"model {model!r} is not ready after {deadline:g}s: {why}", retry)
        for rid, at in list(waiting.items()):
            if at > cutoff:
                break
            rec = core._records[rid]
            core._drop_queued(rec, now)
            out.append(core._reject(rec.peer, rid, rec.req.tenant, 503, "model_unavailable",
                                    *refused))
    return out
