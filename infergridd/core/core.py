"""``SchedulerCore``: every scheduling decision, pure and synchronous.

The scheduler daemon is a thin ZeroMQ shell: it decodes a message, calls one
method here and sends the ``Send`` actions it gets back.  Nothing here does
I/O, awaits, reads the wall clock or draws a random number, so the whole
scheduler can be driven by a script in a test and gives the same decisions
for the same script (dicts keep insertion order; no set is ever iterated).

What it holds (DESIGN §2, §3):

* a record per request it knows: queued (in the policy's queues) or in flight
  (on an engine), with the front door (``peer``) that holds its client;
* the engines, as last reported by a supervisor, each with a learned
  dispatch window (``capacity.py``) and our in-flight count on it;
* tenants (``tenants.py``), quotas (``quotas.py``) and the ordering policy.

Every method that can add work or free capacity ends by dispatching whatever
fits, so the shell never has to ask.  ``request_id`` is the idempotency key:
a repeated ``Submit`` or ``Done`` changes nothing.

Restarts: a peer's ``Hello`` carries its full state and replaces what the core
held for it (``peer_hello``); counters, quota levels and runtime tenant
settings travel through ``export_state``/``import_state`` (the daemon writes
them to the state dir), so a tenant cannot clear its debt by a restart.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import protocol as p
from ..config import Config
from . import demand, reconcile
from .capacity import DispatchWindow
from .headroom import Headroom, Standing
from .policy import QueuedRequest, make_policy
from .quotas import Limits, Quotas
from .residency import EngineView, Residency
from .tenants import DEFAULT_TENANT, TenantRegistry

#: how many finished request ids are remembered, so a late duplicate Done is harmless
FINISHED_MEMORY = 100_000
#: Retry-After for rejections that no clock can predict (full queue, queue timeout)
RETRY_AFTER_S = 1.0
#: max_num_seqs for an engine that reports none and whose model is not configured
DEFAULT_MAX_SEQS = 8
STATE_FORMAT = 1

QUEUED = "queued"
INFLIGHT = "inflight"

# best first: the state a model shows is the best among its engines
_STATE_RANK = {s: i for i, s in enumerate((
    p.EngineState.READY, p.EngineState.DRAINING, p.EngineState.WAKING, p.EngineState.STARTING,
    p.EngineState.SLEEPING1, p.EngineState.SLEEPING2, p.EngineState.STOPPING,
    p.EngineState.UNHEALTHY, p.EngineState.FAILED, p.EngineState.STOPPED,
))}


class Send(NamedTuple):
    """One action for the I/O shell: send ``msg`` to ``peer`` ("" = every supervisor)."""

    peer: str
    msg: p.Message


@dataclass(eq=False)
class _Record:
    req: QueuedRequest
    peer: str
    state: str = QUEUED
    engine_id: str = ""
    completion_tokens: int = 0  # reported so far (Progress)
    enqueued_at: float = 0.0  # core clock
    dispatched_at: float = 0.0
    quota_tokens: int = 0  # charged to the tenant's tpm bucket at admission


@dataclass(eq=False)
class _Engine:
    status: p.EngineStatus
    owner: str  # the supervisor peer that reported it last; "" once that peer is gone
    window: DispatchWindow


@dataclass
class _TenantCounts:
    queued: int = 0
    inflight: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class SchedulerCore:
    """See the module docstring and docs/internals.md, "Scheduling core"."""

    def __init__(self, cfg: Config, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tenants = TenantRegistry(cfg)
        self.policy = make_policy(cfg, self.tenants)
        self.quotas = Quotas()
        self._records: dict[str, _Record] = {}
        self._by_peer: dict[str, dict[str, None]] = {}  # peer -> its request ids (ordered)
        self._finished: OrderedDict[str, _Record | None] = OrderedDict()  # LOST keeps its record
        self._engines: dict[str, _Engine] = {}
        self._by_model: dict[str, list[_Engine]] = {}
        self._engine_inflight: dict[str, int] = {}
        self._model_queued: dict[str, int] = {}
        self._model_inflight: dict[str, int] = {}
        self._model_waiting: dict[str, OrderedDict[str, float]] = {}  # oldest first
        self.residency = Residency(cfg)
        self.headroom = Headroom(cfg.scheduler.light_reserve, cfg.scheduler.prefill_guard,
                                 cfg.scheduler.prefill_window_tokens)
        self.policy.inflight_of = self.headroom.inflight
        self._counts: dict[str, _TenantCounts] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0
        self._tenant_names = self.tenants.names()
        self._tenants_version = self.tenants.version

    # ================================================================== request path
    def submit(self, peer: str, s: p.Submit) -> list[Send]:
        """Admit and queue a request, or reject it at once for the tenant's own reasons."""
        if s.request_id in self._records or s.request_id in self._finished:
            return []
        now = self.clock()
        rejected = self._admit(peer, s, now)
        if rejected:
            return rejected
        self.residency.note_request(s.model, now)
        self.headroom.note_submit(s.model, s.tenant or DEFAULT_TENANT, now)
        return self._tick_residency(now) + self._dispatch_all(now)

    def _admit(self, peer: str, s: p.Submit | p.QueuedRecord, now: float) -> list[Send]:
        """Every admission check, then queue it; returns the Reject, or [] when queued."""
        tenant = s.tenant or (DEFAULT_TENANT if self.cfg.auth == "none" else "")
        t = self.tenants.get(tenant)
        if t is None:
            return [self._reject(peer, s.request_id, tenant, 401, "invalid_api_key",
                                 f"unknown tenant {tenant!r}")]
        if not self._model_known(s.model):
            return [self._reject(peer, s.request_id, tenant, 404, "model_not_found",
                                 f"the model {s.model!r} does not exist")]
        refused = self.residency.refusal(s.model, self._views(s.model))
        if refused is not None:
            return [self._reject(peer, s.request_id, tenant, 503, "model_unavailable", *refused)]
        limit = t.max_queued or self.cfg.scheduler.max_queued_per_tenant
        if self._count(tenant).queued >= limit:
            return [self._reject(peer, s.request_id, tenant, 429, "tenant_queue_full",
                                 f"tenant {tenant!r} already has {limit} requests queued",
                                 RETRY_AFTER_S)]
        req = self._request(s.request_id, tenant, s.model, s.prompt_tokens, s.max_tokens,
                            s.priority, s.submitted_at)
        cost = req.prompt_tokens + req.max_tokens
        limits = Limits(rpm=t.rpm, tpm=t.tpm, burst=t.burst)
        rej = self.quotas.check(s.request_id, tenant, cost, limits, now) \
            or self.policy.admit(req, now)
        if rej is not None:
            return [self._send_reject(peer, rej, tenant)]
        self.quotas.charge(tenant, cost, now)
        self._enqueue(_Record(req=req, peer=peer, quota_tokens=cost if t.tpm > 0 else 0), now)
        return []

    def cancel(self, peer: str, request_id: str) -> list[Send]:
        """The client left while queued: forget the request; an in-flight one ends by Done."""
        rec = self._records.get(request_id)
        if rec is None or rec.peer != peer or rec.state != QUEUED:
            return []
        self._drop_queued(rec, self.clock())
        self._remember_finished(request_id, None)
        return []

    def progress(self, request_id: str, completion_tokens: int) -> None:
        """Completion tokens so far (cumulative): charge the new ones as they stream."""
        rec = self._records.get(request_id)
        if rec is None or rec.state != INFLIGHT or completion_tokens <= rec.completion_tokens:
            return
        delta = completion_tokens - rec.completion_tokens
        if not rec.completion_tokens:
            self.headroom.first_token(request_id, rec.engine_id)
        rec.completion_tokens = completion_tokens
        self.policy.on_progress(rec.req.tenant, delta)
        rec.req.charged_completion += delta

    def done(self, peer: str, d: p.Done) -> list[Send]:
        """A dispatched request ended: free its slot, charge its real usage. Idempotent."""
        now = self.clock()
        if not self._finish(d, now):
            return []
        return self._tick_residency(now) + self._dispatch_all(now)

    def tick(self) -> list[Send]:
        """Tenant removals, queue deadlines, then dispatch as much as fits."""
        now = self.clock()
        out = self._apply_tenant_changes(now)
        out += self._expire(now)
        out += self._tick_residency(now)
        out += demand.reject_unservable(self, now)
        out += self._dispatch_all(now)
        return out

    # ================================================================== peers
    def engines_update(self, peer: str, engines: list[p.EngineStatus], gpu_total_bytes: int = 0,
                       gpu_free_bytes: int = 0) -> list[Send]:
        """A supervisor's full list of engines (the ones it no longer lists are gone) and
        its ledger's GPU figures (0: unchanged)."""
        now = self.clock()
        if gpu_total_bytes:
            self.residency.gpu_total = gpu_total_bytes
            self.residency.gpu_free = gpu_free_bytes
        listed = {e.engine_id for e in engines}
        for eid, e in list(self._engines.items()):
            if eid not in listed and e.owner in (peer, ""):
                del self._engines[eid]
        for st in engines:
            e = self._engines.get(st.engine_id)
            fallback = self._fallback_max_seqs(st.model)
            old = e.status if e is not None else None
            if e is None:
                e = self._engines[st.engine_id] = _Engine(
                    status=st, owner=peer,
                    window=DispatchWindow(st.max_num_seqs or fallback,
                                          self.cfg.scheduler.kv_threshold))
            elif e.owner != peer:  # another supervisor: answers to the old one's commands are lost
                self.residency.forget_pending(st.engine_id)
            self.residency.observe(old, st, now)
            e.status, e.owner = st, peer
            if st.state == p.EngineState.READY:
                e.window.observe(st, self._engine_inflight.get(st.engine_id, 0), fallback)
        self._by_model = {}
        for e in self._engines.values():
            self._by_model.setdefault(e.status.model, []).append(e)
        return self._tick_residency(now) + self._dispatch_all(now)

    def command_result(self, peer: str, r: p.EngineCommandResult) -> list[Send]:
        """A supervisor answered an EngineCommand; a refusal is retried by residency."""
        now = self.clock()
        e = self._engines.get(r.engine_id)
        self.residency.command_result(r, now, e.status.model if e else "")
        return self._tick_residency(now) + self._dispatch_all(now)

    def peer_hello(self, peer: str, hello: p.Hello) -> list[Send]:
        """Replace what the core held for ``peer`` with the state it reports.

        Front door: a request it lists as queued is queued here (in its place
        by ``submitted_at``; one the core thought dispatched never reached it,
        so it is re-queued and its charge refunded); one it lists in flight is
        in flight here on that engine (charging nothing new: the scheduler
        that dispatched it charged it); its undelivered Dones are applied; and
        what the core held for it that it does not list is gone.
        Requests it held while the scheduler was away go through admission
        (quotas included), so a restart is no way around a quota.
        """
        if hello.role == "supervisor":
            return self.engines_update(peer, hello.engines)
        now = self.clock()
        return reconcile.frontdoor_hello(self, peer, hello, now) + self._tick_residency(now) \
            + self._dispatch_all(now)

    def peer_gone(self, peer: str) -> list[Send]:
        """A peer stopped answering.  Front door: its queue is dropped, its in-flight
        requests end as ``lost`` (slot freed, usage so far stays charged).
        Supervisor: its engines stay dispatchable as last reported (DESIGN §3)."""
        now = self.clock()
        for rid in list(self._by_peer.get(peer, {})):
            rec = self._records[rid]
            if rec.state == QUEUED:
                self._drop_queued(rec, now)
            else:
                self._end_lost(rec, now)
        self._by_peer.pop(peer, None)
        for e in self._engines.values():
            if e.owner == peer:
                e.owner = ""
        return self._dispatch_all(now)

    # ================================================================== views
    def tenant_stats(self) -> list[p.TenantStats]:
        out = []
        for name in self.tenants.names():
            t = self.tenants.get(name)
            assert t is not None
            c = self._counts.get(name) or _TenantCounts()
            out.append(p.TenantStats(
                name=name, weight=t.weight, band=t.band, queued=c.queued, inflight=c.inflight,
                counter=self.policy.counter(name), tokens_in=c.tokens_in,
                tokens_out=c.tokens_out, rejected=dict(c.rejected),
                rpm=t.rpm, tpm=t.tpm, burst=t.burst,
            ))
        return out

    def model_infos(self) -> list[p.ModelInfo]:
        """Each model's state is the best of its engines' (``draining`` while residency
        drains it for a sleep or stop).  ``preload`` is the config's, except for a model
        the operator unloaded: /health does not wait for a model kept down on purpose."""
        names = [m.name for m in self.cfg.models]
        names += [m for m in self._by_model if m not in names]
        out = []
        for name in names:
            engines = sorted(self._by_model.get(name, []), key=lambda e: e.status.engine_id)
            states = [e.status.state for e in engines]
            state = min(states, key=lambda s: _STATE_RANK.get(s, len(_STATE_RANK)),
                        default=p.EngineState.STOPPED)
            if state == p.EngineState.READY and self.residency.draining(name):
                state = p.EngineState.DRAINING  # ours: no new dispatches, in-flight finish
            reason = ""
            if state != p.EngineState.READY:
                errors = [e.status.last_error for e in engines if e.status.last_error]
                reason = self.residency.reason(name) or (errors[0] if errors else (
                    "loading" if state in (p.EngineState.STARTING, p.EngineState.WAKING)
                    else f"engine {state}" if engines else "no engine reported yet"))
            mc = self.cfg.model(name)
            out.append(p.ModelInfo(
                name=name, state=state, engines=[e.status.engine_id for e in engines],
                ready_engines=states.count(p.EngineState.READY),
                preload=(mc.preload if mc is not None else True)
                and not self.residency.unloaded(name),
                memory_bytes=sum(e.status.memory_bytes for e in engines),
                queued=self._model_queued.get(name, 0),
                inflight=self._model_inflight.get(name, 0), reason=reason,
            ))
        return out

    def engine_statuses(self) -> list[p.EngineStatus]:
        return [self._engines[k].status for k in sorted(self._engines)]

    def engine_window(self, engine_id: str) -> tuple[int, int] | None:
        """(learned cap, our in-flight) of one engine, for status displays and tests."""
        e = self._engines.get(engine_id)
        if e is None:
            return None
        return e.window.cap, self._engine_inflight.get(engine_id, 0)

    def auth_table(self) -> tuple[int, list[p.AuthEntry]]:
        return self.tenants.auth_table()

    # ================================================================== persistence
    def export_state(self) -> dict[str, Any]:
        """Counters, quota levels and runtime tenant settings, JSON-able.

        Stable when nothing happens (no timestamps), so the daemon can skip
        writing an unchanged file."""
        now = self.clock()
        return {
            "format": STATE_FORMAT,
            "tenants": self.tenants.export(),
            "policy": {self.policy.name: self.policy.export(now)},
            "quotas": self.quotas.export(now),
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore ``export_state``'s output; ``ValueError`` if the tenant part is malformed."""
        if not isinstance(state, dict):
            raise ValueError("scheduler state: expected a mapping")
        now = self.clock()
        if "tenants" in state:
            self.tenants.import_(state["tenants"])
        pol = state.get("policy")
        if isinstance(pol, dict) and isinstance(pol.get(self.policy.name), dict):
            self.policy.import_(pol[self.policy.name], now)
        quotas = state.get("quotas")
        if isinstance(quotas, dict):
            self.quotas.import_(quotas, self._limits_of, now)
        self._apply_tenant_changes(now)

    # ================================================================== internals
    def _limits_of(self, tenant: str) -> Limits | None:
        t = self.tenants.get(tenant)
        return None if t is None else Limits(rpm=t.rpm, tpm=t.tpm, burst=t.burst)

    def _count(self, tenant: str) -> _TenantCounts:
        c = self._counts.get(tenant)
        if c is None:
            c = self._counts[tenant] = _TenantCounts()
        return c

    def _model_known(self, model: str) -> bool:
        return self.cfg.model(model) is not None or model in self._by_model

    def _fallback_max_seqs(self, model: str) -> int:
        mc = self.cfg.model(model)
        return mc.max_num_seqs if mc is not None else DEFAULT_MAX_SEQS

    def _request(self, request_id: str, tenant: str, model: str, prompt_tokens: int,
                 max_tokens: int, priority: int, submitted_at: float) -> QueuedRequest:
        return QueuedRequest(
            request_id=request_id, tenant=tenant, model=model,
            prompt_tokens=max(0, prompt_tokens), max_tokens=max(0, max_tokens),
            priority=priority, submitted_at=submitted_at, band=self.tenants.band(tenant),
        )

    def _reject(self, peer: str, request_id: str, tenant: str, status: int, code: str,
                reason: str, retry_after_s: float | None = None) -> Send:
        return self._send_reject(peer, p.Reject(request_id=request_id, http_status=status,
                                                code=code, reason=reason,
                                                retry_after_s=retry_after_s), tenant)

    def _send_reject(self, peer: str, rej: p.Reject, tenant: str) -> Send:
        if tenant in self.tenants:
            r = self._count(tenant).rejected
            r[rej.code] = r.get(rej.code, 0) + 1
        return Send(peer, rej)

    def _remember_finished(self, request_id: str, lost: _Record | None) -> None:
        self._finished[request_id] = lost
        self._finished.move_to_end(request_id)
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _link(self, rec: _Record) -> None:
        self._records[rec.req.request_id] = rec
        self._by_peer.setdefault(rec.peer, {})[rec.req.request_id] = None

    def _unlink(self, rec: _Record) -> None:
        rid = rec.req.request_id
        self._records.pop(rid, None)
        mine = self._by_peer.get(rec.peer)
        if mine is not None:
            mine.pop(rid, None)
            if not mine:
                del self._by_peer[rec.peer]

    # ------------------------------------------------------------------ queued
    def _enqueue(self, rec: _Record, now: float) -> None:
        self._seq += 1
        rec.req.seq = self._seq
        rec.state, rec.engine_id, rec.enqueued_at = QUEUED, "", now
        self._link(rec)
        self.policy.enqueue(rec.req)
        self._count(rec.req.tenant).queued += 1
        m = rec.req.model
        self._model_queued[m] = self._model_queued.get(m, 0) + 1
        self._model_waiting.setdefault(m, OrderedDict())[rec.req.request_id] = now
        t = self.tenants.get(rec.req.tenant)
        deadline_s = (t.queue_deadline_s if t else 0.0) or self.cfg.scheduler.queue_deadline_s
        if deadline_s > 0:
            heapq.heappush(self._deadlines, (now + deadline_s, rec.req.seq, rec.req.request_id))

    def _dequeue(self, rec: _Record) -> None:
        """Bookkeeping for a request leaving the queue (the policy was told separately)."""
        self._count(rec.req.tenant).queued -= 1
        m = rec.req.model
        self._model_queued[m] -= 1
        if not self._model_queued[m]:
            del self._model_queued[m]
        waiting = self._model_waiting.get(m)
        if waiting is not None:
            waiting.pop(rec.req.request_id, None)
            if not waiting:
                del self._model_waiting[m]

    def _drop_queued(self, rec: _Record, now: float) -> None:
        """Unserved: out of the queue, quota tokens back."""
        self.policy.remove(rec.req.request_id)
        self._dequeue(rec)
        self._unlink(rec)
        self.quotas.refund(rec.req.tenant, rec.quota_tokens, now)

    def _expire(self, now: float) -> list[Send]:
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq, rid = heapq.heappop(self._deadlines)
            rec = self._records.get(rid)
            if rec is None or rec.state != QUEUED or rec.req.seq != seq:
                continue
            waited = now - rec.enqueued_at
            self._drop_queued(rec, now)
            out.append(self._reject(rec.peer, rid, rec.req.tenant, 503, "queue_timeout",
                                    f"waited {waited:.1f}s in the queue without a free engine",
                                    RETRY_AFTER_S))
        return out

    def _apply_tenant_changes(self, now: float) -> list[Send]:
        """Reject what removed tenants had queued; drop their counters and buckets."""
        if self.tenants.version == self._tenants_version:
            return []
        self._tenants_version = self.tenants.version
        names = self.tenants.names()
        gone = [n for n in self._tenant_names if n not in self.tenants]
        self._tenant_names = names
        if not gone:
            return []
        out = []
        for rec in list(self._records.values()):
            if rec.state == QUEUED and rec.req.tenant not in self.tenants:
                self._drop_queued(rec, now)
                out.append(Send(rec.peer, p.Reject(
                    request_id=rec.req.request_id, http_status=401, code="invalid_api_key",
                    reason=f"tenant {rec.req.tenant!r} was removed")))
        for n in gone:
            self.policy.forget(n)
            self.quotas.forget(n)
            self.headroom.forget_tenant(n)
            c = self._counts.get(n)
            if c is not None and not c.inflight:
                del self._counts[n]
        return out

    # ------------------------------------------------------------------ dispatch
    def _dispatch_all(self, now: float) -> list[Send]:
        out: list[Send] = []
        for model in list(self._model_queued):
            engines = self._ready_engines(model)
            total_cap = sum(e.window.cap for e in engines)
            while engines and self._model_queued.get(model, 0) > 0:
                target = self._pick_engine(engines)
                if target is None:
                    break
                allow, standing = self._headroom_rule(model, target, total_cap, now)
                req = self.policy.pick(model, allow)
                if req is None:  # nobody waiting may use this engine's room now
                    engines.remove(target)
                    continue
                light = standing.light(req.tenant)
                tier = 0 if light else 2 if standing.heavy(req.tenant) else 1
                out.append(self._dispatch(self._records[req.request_id], target, now, tier))
                self.headroom.prompt_sent(req.request_id, req.prompt_tokens,
                                          target.status.engine_id)
                if light and not self._queued_n(req.tenant):
                    self.headroom.guard_light(req.request_id, req.tenant,
                                              target.status.engine_id, now)
        return out

    def _ready_engines(self, model: str) -> list[_Engine]:
        return [e for e in self._by_model.get(model, ())
                if e.status.state == p.EngineState.READY
                and self.residency.dispatchable(model, e.status.engine_id)]

    def _headroom_rule(self, model: str, e: _Engine, total_cap: int, now: float,
                       ) -> tuple[Callable[[str], bool], Standing]:
        """``(allow, standing)`` for one dispatch decision on engine ``e`` (headroom.py).

        ``allow(tenant)``: the window has room for it (a light tenant passes a pause
        that engine-side waiting alone caused) and the headroom rules let it go.
        """
        eid, cap = e.status.engine_id, e.window.cap
        n = self._engine_inflight.get(eid, 0)
        strict = e.window.has_room(n)
        standing = self.headroom.standing(model, total_cap, self._queued_n,
                                          self.tenants.weight, now)

        def allow(tenant: str) -> bool:
            if standing.light(tenant):
                return True
            if not strict:
                return False
            return self.headroom.allows(eid, tenant, n, cap, standing.heavy(tenant), now)

        return allow, standing

    def may_dispatch(self, model: str, engine_id: str, tenant: str) -> bool:
        """Whether the window and the headroom rules would let ``tenant`` start a request
        for ``model`` on ``engine_id`` now (tests check work conservation with it)."""
        engines = self._ready_engines(model)
        e = self._engines.get(engine_id)
        if e is None or e not in engines:
            return False
        if not e.window.has_room(self._engine_inflight.get(engine_id, 0), bypass_waiting=True):
            return False
        allow, _ = self._headroom_rule(model, e, sum(x.window.cap for x in engines),
                                       self.clock())
        return allow(tenant)

    def _queued_n(self, tenant: str) -> int:
        c = self._counts.get(tenant)
        return c.queued if c is not None else 0

    def _pick_engine(self, engines: list[_Engine]) -> _Engine | None:
        """The least loaded engine with room (relative to its cap), ties by engine id.

        Engines whose window is paused only by engine-side waiting still count (a light
        tenant may use them), after every engine with plain room.
        """
        best, best_key = None, None
        for e in engines:
            n = self._engine_inflight.get(e.status.engine_id, 0)
            if e.window.has_room(n, bypass_waiting=True):
                key = (not e.window.has_room(n), n / e.window.cap, n, e.status.engine_id)
                if best_key is None or key < best_key:
                    best, best_key = e, key
        return best

    def _dispatch(self, rec: _Record, e: _Engine, now: float, tier: int = 1) -> Send:
        """Send ``rec`` to ``e`` with an engine priority from the tenant's standing.

        ``band * 1000 + tier``; tier 0: light, 1: neither, 2: heavy (headroom.py).  The
        engine admits the fresh requests of its next step in priority order, then
        FCFS, so a flooder's requests sent a moment earlier do not go before a quiet
        tenant's, and under KV pressure vLLM preempts the heavy ones first.  Not the
        VTC rank: counters within a prompt's cost of each other flip that rank from
        one dispatch to the next."""
        req = rec.req
        st = e.status
        prio = (req.band * 1000 + tier) * st.priority_sign if st.supports_priority else None
        self.policy.on_dispatch(req)
        req.charged_prompt, req.charged_completion = req.prompt_tokens, 0
        self._dequeue(rec)
        self._to_inflight(rec, e.status.engine_id, now)
        self.residency.note_activity(req.model, now)
        return Send(rec.peer, p.Dispatch(
            request_id=req.request_id, engine_id=st.engine_id, endpoint=st.endpoint,
            api_key=st.api_key, engine_priority=prio,
            queue_wait_s=round(max(0.0, now - rec.enqueued_at), 6)))

    def _to_inflight(self, rec: _Record, engine_id: str, now: float) -> None:
        rec.state, rec.engine_id, rec.dispatched_at = INFLIGHT, engine_id, now
        self._count(rec.req.tenant).inflight += 1
        m = rec.req.model
        self.headroom.started(m, rec.req.tenant, rec.req.request_id)
        self._model_inflight[m] = self._model_inflight.get(m, 0) + 1
        self._engine_inflight[engine_id] = self._engine_inflight.get(engine_id, 0) + 1

    def _free(self, rec: _Record) -> None:
        """The slot a request held on its engine is free again."""
        c = self._count(rec.req.tenant)
        c.inflight -= 1
        m, eid = rec.req.model, rec.engine_id
        self.headroom.ended(m, rec.req.tenant, rec.req.request_id, eid)
        self._model_inflight[m] -= 1
        if not self._model_inflight[m]:
            del self._model_inflight[m]
        self._engine_inflight[eid] -= 1
        if not self._engine_inflight[eid]:
            del self._engine_inflight[eid]

    # ------------------------------------------------------------------ ending
    def _finish(self, d: p.Done, now: float) -> bool:
        """Apply one Done; False when it changed nothing (a duplicate)."""
        rid = d.request_id
        rec = self._records.get(rid)
        if rec is None:
            if rid in self._finished:
                lost = self._finished[rid]
                if lost is None:
                    return False  # a duplicate
                # ended as lost when its front door went silent; now the real usage is known
                self._charge_usage(lost, d, now)
                self._finished[rid] = None
                return False
            # unknown: it finished while the scheduler was away (restart).  The prompt was
            # charged by the scheduler that dispatched it; the output mostly streamed
            # while nobody counted, so charge the output.
            if d.tenant in self.tenants:
                ghost = self._request(rid, d.tenant, d.model, d.prompt_tokens, 0, 0, 0.0)
                ghost.charged_prompt = ghost.prompt_tokens
                self.policy.on_done(ghost, d.prompt_tokens, d.completion_tokens)
                c = self._count(d.tenant)
                c.tokens_in += max(0, d.prompt_tokens)
                c.tokens_out += max(0, d.completion_tokens)
            self._remember_finished(rid, None)
            return False
        if rec.state == QUEUED:
            # it ran without this core's dispatch (re-queued by a Hello while it ran)
            self.policy.remove(rid)
            self._dequeue(rec)
            rec.req.charged_prompt = rec.req.charged_completion = 0
            self._unlink(rec)
            self._charge_usage(rec, d, now)
            self._remember_finished(rid, None)
            return False
        self._free(rec)
        self._unlink(rec)
        self._charge_usage(rec, d, now)
        self._remember_finished(rid, None)
        self.residency.note_activity(rec.req.model, now)
        return True

    def _charge_usage(self, rec: _Record, d: p.Done, now: float) -> None:
        """Correct the policy's charges, the quota and the stats to the real usage.

        An engine that ended early may report no usage: a request that produced
        output surely had its prompt processed (keep the estimate), and a
        cancelled one keeps what streamed."""
        req = rec.req
        completion = max(0, d.completion_tokens)
        if d.outcome != p.Outcome.OK:
            completion = max(completion, rec.completion_tokens)
        prompt = max(0, d.prompt_tokens)
        if prompt == 0 and (completion > 0 or d.outcome == p.Outcome.CANCELLED):
            prompt = req.prompt_tokens
        self.policy.on_done(req, prompt, completion)
        c = self._count(req.tenant)
        c.tokens_in += prompt - req.charged_prompt if rec.state == "lost" else prompt
        c.tokens_out += completion - req.charged_completion if rec.state == "lost" \
            else completion
        req.charged_prompt, req.charged_completion = prompt, completion
        self.quotas.refund(req.tenant, rec.quota_tokens - prompt - completion, now)
        rec.quota_tokens = 0

    def _end_lost(self, rec: _Record, now: float) -> None:
        """Its front door is gone: free the slot, keep what was charged; a real Done
        arriving later (the front door comes back) still corrects it."""
        self._free(rec)
        self._unlink(rec)
        c = self._count(rec.req.tenant)
        c.tokens_in += rec.req.charged_prompt
        c.tokens_out += rec.req.charged_completion
        rec.state = "lost"
        self._remember_finished(rec.req.request_id, rec)

    def _new_record(self, req: QueuedRequest, peer: str, completion_tokens: int) -> _Record:
        return _Record(req=req, peer=peer, completion_tokens=completion_tokens)

    # ------------------------------------------------------------------ residency
    def _views(self, model: str) -> list[EngineView]:
        return [EngineView(e.status, e.owner, self._engine_inflight.get(e.status.engine_id, 0))
                for e in self._by_model.get(model, ())]

    def _tick_residency(self, now: float) -> list[Send]:
        """Residency's commands, each to the supervisor that owns the engine."""
        return [Send(peer, cmd) for peer, cmd in self.residency.plan(now, demand.model_views(self))]

    def model_up(self, model: str) -> list[Send]:
        """Operator ``model load``/``wake``: bring it up (evicting others if needed)."""
        now = self.clock()
        self.residency.request_up(model, now)
        return self._tick_residency(now) + self._dispatch_all(now)

    def model_down(self, model: str, action: str, level: int = 1) -> list[Send]:
        """Operator ``model unload`` (``stop``) or ``model sleep``: drain, then that.
        An unloaded model's queued requests get 503 at once (it stays down)."""
        now = self.clock()
        self.residency.request_down(model, action, level, now)
        return self._tick_residency(now) + demand.reject_unservable(self, now)

    def model_settled(self, model: str, target: str) -> bool:
        return self.residency.settled(model, self._views(model), target)

    def model_inflight(self, model: str) -> int:
        return self._model_inflight.get(model, 0)

