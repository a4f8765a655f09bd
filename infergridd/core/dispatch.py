"""``Dispatcher``: which engine gets the next request, and with what engine priority.

The policy decides *which* request goes next; this decides *whether* anything
may go and *where*: an engine of the model with room in its learned window
(``capacity.py``), chosen least loaded first, and the headroom rules
(``headroom.py``) that keep a slot reserve and a prefill guard against
tenants over their fair share.  It runs after every event that can add work
or free capacity, and sends as much as fits.

The loop's order is part of the core's deterministic behaviour (benchmarks
replay it byte for byte): models in the order they first had a request
queued, then engines by (paused, load, in-flight, id).

An *assisted* engine (one that runs InferGrid's step policy, ``assist/``, and
has said so itself: ``EngineStatus.assist == "on"``) takes a light request
even when its window is full, up to ``light_overflow`` over the cap: the
engine preempts its newest heavy sequence for the seat, which no front end
can do.  On such an engine the reserve and the prefill guard are off: the
engine holds heavy prefills back itself, step by step, without leaving seats
empty.  And there every tenant that is not light is sent as heavy while a
light one is around, not only those over their share of seats: a flooder of
long prompts holds few seats yet fills every step with its prefill chunks.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import protocol as p
from .books import Books
from .engine_table import Engine, EngineTable
from .headroom import Headroom, Standing
from .policy import Policy
from .record import Record
from .residency import Residency
from .send import Send
from .tenants import TenantRegistry

#: an assisted engine takes this many light requests over its window's cap, at least
MIN_LIGHT_OVERFLOW = 2


def light_overflow(cap: int) -> int:
    """Light requests an assisted engine may hold beyond its cap (each one preempts a
    heavy sequence there): a few, and an eighth of a large engine."""
    return max(MIN_LIGHT_OVERFLOW, cap // 8)


def assisted_engine(e: Engine) -> bool:
    return e.status.assist == "on"


class Dispatcher:
    """Dispatch as much as fits; ``may_dispatch`` answers the same rule for tests."""

    def __init__(self, tenants: TenantRegistry, policy: Policy, headroom: Headroom,
                 residency: Residency, books: Books, engines: EngineTable) -> None:
        self.tenants = tenants
        self.policy = policy
        self.headroom = headroom
        self.residency = residency
        self.books = books
        self.engines = engines

    def dispatch_all(self, now: float) -> list[Send]:
        """Every queued request that an engine has room for, in policy order."""
        out: list[Send] = []
        books = self.books
        for model in books.queued_models():
            engines = self.engines.ready(model)
            total_cap = sum(e.window.cap for e in engines)
            while engines and books.model_queued(model) > 0:
                target = self._pick_engine(engines)
                if target is None:
                    break
                allow, standing = self._headroom_rule(model, target, total_cap, now)
                rec = self.policy.pick(model, allow)
                if rec is None:  # nobody waiting may use this engine's room now
                    engines.remove(target)
                    continue
                light = standing.light(rec.tenant)
                tier = 0 if light else 2 if standing.heavy(rec.tenant) or (
                    assisted_engine(target) and standing.light_around) else 1
                out.append(self._dispatch(rec, target, now, tier))
                self.headroom.prompt_sent(rec.request_id, rec.prompt_tokens,
                                          target.status.engine_id)
                if light and not books.queued_n(rec.tenant):
                    self.headroom.guard_light(rec.request_id, rec.tenant,
                                              target.status.engine_id, now)
        return out

    def start_leased(self, rec: Record, engine_id: str, now: float) -> None:
        """Start ``rec`` (just queued) on ``engine_id``, where a front door already sent
        it on a slot lease: what ``dispatch_all`` does for a dispatch, without the Send."""
        total_cap = sum(e.window.cap for e in self.engines.ready(rec.model))
        standing = self.headroom.standing(rec.model, total_cap, self.books.queued_n,
                                          self.tenants.weight, now)
        light = standing.light(rec.tenant)
        self.books.start(rec, engine_id, now)
        self.residency.note_activity(rec.model, now)
        self.headroom.prompt_sent(rec.request_id, rec.prompt_tokens, engine_id)
        if light and not self.books.queued_n(rec.tenant):
            self.headroom.guard_light(rec.request_id, rec.tenant, engine_id, now)

    def may_dispatch(self, model: str, engine_id: str, tenant: str,
                     clock: Callable[[], float]) -> bool:
        """Whether the window and the headroom rules would let ``tenant`` start a request
        for ``model`` on ``engine_id`` now (tests check work conservation with it)."""
        engines = self.engines.ready(model)
        e = self.engines.get(engine_id)
        if e is None or e not in engines:
            return False
        if not self._has_room(e, self.books.engine_occupied(engine_id)):
            return False
        allow, _ = self._headroom_rule(model, e, sum(x.window.cap for x in engines), clock())
        return allow(tenant)

    def _headroom_rule(self, model: str, e: Engine, total_cap: int, now: float,
                       ) -> tuple[Callable[[str], bool], Standing]:
        """``(allow, standing)`` for one dispatch decision on engine ``e`` (headroom.py).

        ``allow(tenant)``: the window has room for it (a light tenant passes a pause
        that engine-side waiting alone caused) and the headroom rules let it go.
        """
        eid, cap = e.status.engine_id, e.window.cap
        n = self.books.engine_occupied(eid)
        strict = e.window.has_room(n)
        assisted = assisted_engine(e)
        light_room = self._has_room(e, n)
        standing = self.headroom.standing(model, total_cap, self.books.queued_n,
                                          self.tenants.weight, now)

        def allow(tenant: str) -> bool:
            if standing.light(tenant):
                return light_room
            if not strict:
                return False
            return self.headroom.allows(eid, tenant, n, cap, standing.heavy(tenant), now,
                                        assisted=assisted)

        return allow, standing

    def _pick_engine(self, engines: list[Engine]) -> Engine | None:
        """The least loaded engine with room (relative to its cap), ties by engine id.

        Engines whose window is paused only by engine-side waiting still count (a light
        tenant may use them), after every engine with plain room.
        """
        best, best_key = None, None
        for e in engines:
            n = self.books.engine_occupied(e.status.engine_id)
            if self._has_room(e, n):
                key = (not e.window.has_room(n), n / e.window.cap, n, e.status.engine_id)
                if best_key is None or key < best_key:
                    best, best_key = e, key
        return best

    @staticmethod
    def _has_room(e: Engine, n: int) -> bool:
        """Room for somebody: the window's, ignoring a pause only engine-side waiting
        caused (light tenants pass it), or an assisted engine's overflow for light work."""
        return e.window.has_room(n, bypass_waiting=True) or (
            assisted_engine(e) and n < e.window.cap + light_overflow(e.window.cap))

    def _dispatch(self, rec: Record, e: Engine, now: float, tier: int = 1) -> Send:
        """Send ``rec`` to ``e`` with an engine priority from the tenant's standing.

        ``band * 1000 + tier``; tier 0: light, 1: neither, 2: heavy (headroom.py).  The
        engine admits the fresh requests of its next step in priority order, then
        FCFS, so a flooder's requests sent a moment earlier do not go before a quiet
        tenant's, and under KV pressure vLLM preempts the heavy ones first.  Not the
        VTC rank: counters within a prompt's cost of each other flip that rank from
        one dispatch to the next."""
        st = e.status
        prio = (rec.band * 1000 + tier) * st.priority_sign if st.supports_priority else None
        self.books.start(rec, st.engine_id, now)
        self.residency.note_activity(rec.model, now)
        return Send(rec.peer, p.Dispatch(
            request_id=rec.request_id, engine_id=st.engine_id, endpoint=st.endpoint,
            api_key=st.api_key, engine_priority=prio,
            queue_wait_s=round(max(0.0, now - rec.enqueued_at), 6)))
