"""``vtc``: weighted Virtual Token Counters (Sheng et al., OSDI'24), the default policy.

Each tenant has a counter of the service it has received, in weighted tokens:
``(input × input_weight + output × output_weight) / tenant weight``.  The
next request for a model comes from the tenant, among those with a request
queued for that model, whose counter is smallest — so, while tenants are
backlogged, each gets service in proportion to its weight whatever the size
of its requests, and one flooding tenant cannot push the others back.

Charging (why three steps): the prompt is charged at dispatch from the front
door's estimate, so a burst of dispatches in one tick already rotates between
tenants; output is charged as it streams (``Progress``), so a tenant with long
generations pays while it holds the engine, not only when it finishes; at
``Done`` both are corrected to the engine's real usage.

No banking credit (the paper's *lift*): when a tenant becomes backlogged for a
model, its counter is raised to the smallest counter among the tenants already
backlogged for that model in the same band.  When nobody is, it is raised to
the counter the last tenant to leave that model's queue had when it left (the
paper's rule for an empty queue).  Its own counter is never lowered.  We lift
per (model, band) rather than globally so that a request stuck behind a model
that is still loading cannot shelter a tenant from the lift on another model,
and so that a higher band's counters never penalise a lower band's tenants.

Within a tenant, requests go in submit order (``submitted_at``, then arrival).
Ties between tenants with equal counters go to the tenant with fewer requests in
flight on the model, then to the earliest queued request.  The first rule matters
at every lift: a tenant back from idle is raised to exactly the flooder's counter,
and without it the flooder's older head would win that tie every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..config import Config
from .policy import OrderedQueue, Policy, TenantView
from .record import Record


class VtcPolicy(Policy):
    name = "vtc"

    def __init__(self, cfg: Config, tenants: TenantView) -> None:
        super().__init__(cfg, tenants)
        self.w_in = cfg.scheduler.input_weight
        self.w_out = cfg.scheduler.output_weight
        self.counters: dict[str, float] = {}
        # model -> tenant -> its queue for that model; only non-empty queues are kept,
        # so "tenant is a key" means "tenant is backlogged for that model"
        self._queues: dict[str, dict[str, OrderedQueue]] = {}
        self._where: dict[str, Record] = {}
        self._count: dict[str, int] = {}
        self._last_left: dict[tuple[str, int], float] = {}

    # ------------------------------------------------------------------ queue
    def enqueue(self, req: Record) -> None:
        per_model = self._queues.setdefault(req.model, {})
        q = per_model.get(req.tenant)
        if q is None:
            self._lift(req, per_model)
            q = per_model[req.tenant] = OrderedQueue()
        q.push(req.order_key(), req)
        self._where[req.request_id] = req
        self._count[req.model] = self._count.get(req.model, 0) + 1

    def _lift(self, req: Record, per_model: dict[str, OrderedQueue]) -> None:
        """Raise a newly backlogged tenant so it cannot spend credit banked while idle."""
        others = [
            self.counters.get(t, 0.0)
            for t, q in per_model.items()
            if t != req.tenant and (h := q.peek()) is not None and h.band == req.band
        ]
        floor = min(others) if others else self._last_left.get((req.model, req.band))
        own = self.counters.get(req.tenant, 0.0)
        if floor is not None and floor > own:
            own = floor
        self.counters[req.tenant] = own

    def remove(self, request_id: str) -> Record | None:
        req = self._where.pop(request_id, None)
        if req is None:
            return None
        per_model = self._queues[req.model]
        q = per_model[req.tenant]
        q.discard(request_id)
        self._count[req.model] -= 1
        if not len(q):
            del per_model[req.tenant]
            self._last_left[(req.model, req.band)] = self.counters.get(req.tenant, 0.0)
        return req

    def pick(self, model: str,
             allow: Callable[[str], bool] | None = None) -> Record | None:
        best: Record | None = None
        best_key: tuple[Any, ...] = ()
        for tenant, q in self._queues.get(model, {}).items():
            head = q.peek()
            if head is None:  # pragma: no cover - empty queues are deleted
                continue
            if allow is not None and not allow(tenant):
                continue
            key = (head.band, self.counters.get(tenant, 0.0), self.inflight_of(model, tenant),
                   head.order_key(), head.seq)
            if best is None or key < best_key:
                best, best_key = head, key
        return best

    def queued(self, model: str) -> int:
        return self._count.get(model, 0)

    # ------------------------------------------------------------------ charging
    def _charge(self, tenant: str, tokens_in: float, tokens_out: float) -> None:
        w = self.tenants.weight(tenant)
        cost = (tokens_in * self.w_in + tokens_out * self.w_out) / (w if w > 0 else 1.0)
        self.counters[tenant] = self.counters.get(tenant, 0.0) + cost

    def on_dispatch(self, req: Record) -> None:
        # charge before leaving the queue: the "last left" counter includes this request
        self._charge(req.tenant, req.prompt_tokens, 0)
        self.remove(req.request_id)

    def on_progress(self, tenant: str, delta_out_tokens: int) -> None:
        if delta_out_tokens > 0:
            self._charge(tenant, 0, delta_out_tokens)

    def on_done(self, req: Record, prompt_tokens: int, completion_tokens: int) -> None:
        self._charge(req.tenant, prompt_tokens - req.charged_prompt,
                     completion_tokens - req.charged_completion)

    def counter(self, tenant: str) -> float:
        return self.counters.get(tenant, 0.0)

    def forget(self, tenant: str) -> None:
        self.counters.pop(tenant, None)

    # ------------------------------------------------------------------ persistence
    def export(self, now: float) -> dict[str, Any]:
        return {
            "counters": {t: round(c, 6) for t, c in self.counters.items()},
            "last_left": [[m, b, round(c, 6)] for (m, b), c in self._last_left.items()],
        }

    def import_(self, data: dict[str, Any], now: float) -> None:
        counters = data.get("counters")
        if isinstance(counters, dict):
            for tenant, c in counters.items():
                if _number(c):
                    self.counters[str(tenant)] = float(c)
        last = data.get("last_left")
        if isinstance(last, list):
            for item in last:
                if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) \
                        and isinstance(item[1], int) and _number(item[2]):
                    self._last_left[(item[0], item[1])] = float(item[2])


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
