"""Read-only views of the core for the daemon's status, metrics and ``/health``.

Built on demand from the books, the engine table and residency; they change
nothing, so the daemon may call them at any time and as often as it likes.
"""

from __future__ import annotations

from .. import protocol as p
from ..config import Config
from .books import Books, TenantCounts
from .engine_table import EngineTable
from .policy import Policy
from .residency import Residency
from .tenants import TenantRegistry

# best first: the state a model shows is the best among its engines
_STATE_RANK = {s: i for i, s in enumerate((
    p.EngineState.READY, p.EngineState.DRAINING, p.EngineState.WAKING, p.EngineState.STARTING,
    p.EngineState.SLEEPING1, p.EngineState.SLEEPING2, p.EngineState.STOPPING,
    p.EngineState.UNHEALTHY, p.EngineState.FAILED, p.EngineState.STOPPED,
))}


def tenant_stats(tenants: TenantRegistry, policy: Policy, books: Books) -> list[p.TenantStats]:
    """Every tenant's settings, counts and policy counter, in the registry's order."""
    out = []
    for name in tenants.names():
        t = tenants.get(name)
        assert t is not None
        c = books.counts_or_none(name) or TenantCounts()
        out.append(p.TenantStats(
            name=name, weight=t.weight, band=t.band, queued=c.queued, inflight=c.inflight,
            counter=policy.counter(name), tokens_in=c.tokens_in,
            tokens_out=c.tokens_out, rejected=dict(c.rejected),
            rpm=t.rpm, tpm=t.tpm, burst=t.burst,
        ))
    return out


def model_infos(cfg: Config, engines: EngineTable, residency: Residency,
                books: Books) -> list[p.ModelInfo]:
    """Each model's state is the best of its engines' (``draining`` while residency
    drains it for a sleep or stop).  ``preload`` is the config's, except for a model
    the operator unloaded: /health does not wait for a model kept down on purpose."""
    names = [m.name for m in cfg.models]
    names += [m for m in engines.models() if m not in names]
    out = []
    for name in names:
        of_model = sorted(engines.of_model(name), key=lambda e: e.status.engine_id)
        states = [e.status.state for e in of_model]
        state = min(states, key=lambda s: _STATE_RANK.get(s, len(_STATE_RANK)),
                    default=p.EngineState.STOPPED)
        if state == p.EngineState.READY and residency.draining(name):
            state = p.EngineState.DRAINING  # ours: no new dispatches, in-flight finish
        reason = ""
        if state != p.EngineState.READY:
            errors = [e.status.last_error for e in of_model if e.status.last_error]
            reason = residency.reason(name) or (errors[0] if errors else (
                "loading" if state in (p.EngineState.STARTING, p.EngineState.WAKING)
                else f"engine {state}" if of_model else "no engine reported yet"))
        mc = cfg.model(name)
        out.append(p.ModelInfo(
            name=name, state=state, engines=[e.status.engine_id for e in of_model],
            ready_engines=states.count(p.EngineState.READY),
            preload=(mc.preload if mc is not None else True) and not residency.unloaded(name),
            # an engine's memory_bytes is what it holds on each of its GPUs (tensor parallel)
            memory_bytes=sum(e.status.memory_bytes * max(1, len(e.status.devices))
                             for e in of_model),
            queued=books.model_queued(name),
            inflight=books.model_inflight(name), reason=reason,
        ))
    return out
