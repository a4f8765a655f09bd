"""Headroom for light tenants: spare slots, a short hold, a bound on queued prompts (pure).

Why: the dispatch window keeps an engine just saturated, so while a flooder is
backlogged every slot is busy, and a quiet tenant's request, first in line at
once thanks to its small counter, still waits for the next flooder request to
*finish* before it can start.  Then, once dispatched, it shares the engine's
next step with whatever flooder prompts went in beside it, and a step that
prefills long prompts is several times a decode step.  VTC decides who goes
first; these rules decide how long "first" takes.  Who is light and who is
heavy is worked out once per dispatch decision (``Standing``):

* **reserve**: a *heavy* tenant may fill an engine only up to
  ``cap - reserve``; the last slots (at most ``cap // 8``, none on an engine of
  fewer than 8) are for the others.  A tenant alone on a model is never heavy,
  so a lone flooder still gets the whole engine: the reserve costs capacity
  only while someone else is around.
* **prefill guard**: while a light tenant's request that had nothing queued
  behind it has not produced its first token, heavy tenants dispatch nothing
  more to that engine, so the step computing that first token carries no extra
  prompt.  It ends at the first token (the front door reports it at once) or
  after ``GUARD_MAX_S``.
* **prefill window**: the prompt tokens sent to an engine and not yet computed
  are bounded (``prefill_window``; one prompt always may go); beyond it only
  light tenants dispatch.  An engine computes a bounded number of prompt tokens
  a step and runs its running requests first, so prompts sent beyond that
  form a queue inside the engine that no priority reaches: with 6k-token
  prompts it made a quiet tenant wait seconds (bench/floor.py).
* **waiting pause**: a light tenant's request may pass the dispatch window's
  pause on engine-side waiting (KV pressure still holds everyone).

"Around" means a tenant submitted to the model in the last ``ACTIVE_S``
seconds, or has requests queued or in flight there: a quiet tenant at one request a
second is around all the time, though most of the time it has nothing queued.
The figures behind the defaults: ``bench/floor.py`` and the README's Results.

Pure and synchronous like the rest of the core: the clock comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Callable

#: a tenant counts as around on a model this long after its last submit
ACTIVE_S = 10.0
#: the reserve is at most cap // this: a small engine keeps (nearly) all its slots
RESERVE_DIVISOR = 8
#: a tenant with at most this many requests queued (and under its share) is light
LIGHT_QUEUE = 2
#: ... and fewer than this many of its requests sent but still computing their prompt
LIGHT_PREFILLS = 4
#: the prefill guard never holds heavy tenants back longer than this per request
GUARD_MAX_S = 2.0


class Headroom:
    """See the module docstring."""

    def __init__(self, reserve: int, guard: bool, prefill_window: int = 0) -> None:
        self.reserve = max(0, reserve)
        self.guard = guard
        self.prefill_window = max(0, prefill_window)
        # engine -> request sent there and still without its first token -> its
        # prompt tokens, and their running sum per engine.  No time limit: a long
        # prompt behind others may take seconds, and its Done (one per dispatch)
        # ends it at worst.
        self._fresh: dict[str, dict[str, int]] = {}
        self._fresh_tokens: dict[str, int] = {}
        self._last_submit: dict[str, dict[str, float]] = {}  # model -> tenant -> time
        self._inflight: dict[str, dict[str, int]] = {}  # model -> tenant -> in flight
        # engine -> guarded request -> (its tenant, hold until)
        self._guards: dict[str, dict[str, tuple[str, float]]] = {}
        self._unstarted: dict[str, tuple[str, str]] = {}  # request -> (model, tenant)
        self._prefilling: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ bookkeeping
    def note_submit(self, model: str, tenant: str, now: float) -> None:
        self._last_submit.setdefault(model, {})[tenant] = now

    def inflight(self, model: str, tenant: str) -> int:
        return self._inflight.get(model, {}).get(tenant, 0)

    def started(self, model: str, tenant: str, request_id: str) -> None:
        per = self._inflight.setdefault(model, {})
        per[tenant] = per.get(tenant, 0) + 1
        self._unstarted[request_id] = (model, tenant)
        key = (model, tenant)
        self._prefilling[key] = self._prefilling.get(key, 0) + 1

    def prefilling(self, model: str, tenant: str) -> int:
        """The tenant's requests on ``model`` sent but still without a first token."""
        return self._prefilling.get((model, tenant), 0)

    def ended(self, model: str, tenant: str, request_id: str, engine_id: str) -> None:
        per = self._inflight.get(model)
        if per is not None and tenant in per:
            per[tenant] -= 1
            if per[tenant] <= 0:
                del per[tenant]
        self.first_token(request_id, engine_id)

    def guard_light(self, request_id: str, tenant: str, engine_id: str, now: float) -> None:
        """An intermittent tenant's request went to ``engine_id``: hold the heavy ones
        until its first token."""
        if self.guard:
            self._guards.setdefault(engine_id, {})[request_id] = (tenant, now + GUARD_MAX_S)

    def prompt_sent(self, request_id: str, prompt_tokens: int, engine_id: str) -> None:
        """A request went to ``engine_id``: its prompt counts against the engine's
        prefill window until its first token (light tenants' too: they are not held
        by the window, but their prompts fill it like any other)."""
        if self.prefill_window:
            self._fresh.setdefault(engine_id, {})[request_id] = prompt_tokens
            self._fresh_tokens[engine_id] = self._fresh_tokens.get(engine_id, 0) + prompt_tokens

    def first_token(self, request_id: str, engine_id: str) -> None:
        key = self._unstarted.pop(request_id, None)
        if key is not None:
            self._prefilling[key] -= 1
            if self._prefilling[key] <= 0:
                del self._prefilling[key]
        g = self._guards.get(engine_id)
        if g is not None and g.pop(request_id, None) is not None and not g:
            del self._guards[engine_id]
        f = self._fresh.get(engine_id)
        tokens = f.pop(request_id, None) if f is not None else None
        if tokens is not None:
            self._fresh_tokens[engine_id] -= tokens
            if not f:
                del self._fresh[engine_id], self._fresh_tokens[engine_id]

    def forget_tenant(self, tenant: str) -> None:
        for per in self._last_submit.values():
            per.pop(tenant, None)

    # ------------------------------------------------------------------ decisions
    def standing(self, model: str, total_cap: int, queued: Callable[[str], int],
                 weight: Callable[[str], float], now: float) -> Standing:
        """Who is heavy and who is light, for one dispatch decision on ``model``.

        ``queued(t)``: how many requests tenant ``t`` has queued.  Computed once
        per decision, so asking about every tenant stays linear in the tenants.
        """
        around = self._around(model, now, queued)
        per = self._inflight.get(model, {})
        weights = {t: max(weight(t), 1e-9) for t in around}
        total_w = sum(weights.values())
        shares = {t: total_cap * w / total_w for t, w in weights.items()}
        prefilling = {t: self.prefilling(model, t) for t in around}
        return Standing(per, shares, queued, prefilling)

    def prefill_full(self, engine_id: str) -> bool:
        """Whether the prompts still being computed on ``engine_id`` fill the prefill
        window; one prompt always may go."""
        return bool(self.prefill_window
                    and self._fresh_tokens.get(engine_id, 0) >= self.prefill_window)

    def allows(self, engine_id: str, tenant: str, inflight: int, cap: int, heavy: bool,
               now: float, assisted: bool = False) -> bool:
        """Whether ``tenant``, not light, may dispatch to this engine now (the window
        said it has room).

        A guard never holds back its own tenant: a tenant that crosses its share
        while its first requests compute is not to be stalled by them.  An assisted
        engine (core/dispatch.py) needs neither reserve nor guard: it preempts for a
        light request's seat and holds heavy prefills back itself.
        """
        if self.prefill_full(engine_id):
            return False
        if not heavy or assisted:
            return True
        if inflight >= cap - min(self.reserve, cap // RESERVE_DIVISOR):
            return False
        g = self._guards.get(engine_id)
        if not g:
            return True
        held = False
        for rid, (owner, until) in list(g.items()):
            if until <= now:
                del g[rid]
            elif owner != tenant:
                held = True
        if not g:
            del self._guards[engine_id]
        return not held

    def _around(self, model: str, now: float,
                queued: Callable[[str], int]) -> dict[str, None]:
        out: dict[str, None] = {}
        for t, at in self._last_submit.get(model, {}).items():
            if now - at < ACTIVE_S or queued(t):
                out[t] = None
        for t in self._inflight.get(model, {}):
            out[t] = None
        return out


class Standing:
    """Heavy and light tenants at one dispatch decision (``Headroom.standing``).

    *Heavy*: holds at least its weighted share of the model's slots while some
    light tenant is around to be protected from it.  When every tenant around is backlogged nobody is heavy
    and VTC alone decides: the headroom is for arrivals, not for ordering a
    backlog.

    *Light*: under its share, with at most ``LIGHT_QUEUE`` requests queued and
    fewer than ``LIGHT_PREFILLS`` sent but still computing their prompt (a flooder
    starting up sends one request at a time too, and is light for no more than
    its first couple of prompts).  A
    light tenant's request may go to an engine that still shows requests
    waiting inside it (the dispatch window pauses the others until one
    finishes): those are requests we just sent, the engine admits them at its
    next step while it has free slots, and with engine priorities the light one
    goes first.  What a light tenant can add to the engine's queue is bounded
    by the window's cap and its own tiny backlog.
    """

    def __init__(self, inflight: dict[str, int], shares: dict[str, float],
                 queued: Callable[[str], int], prefilling: dict[str, int]) -> None:
        self._prefilling = prefilling
        self._inflight = inflight
        self._shares = shares
        self._queued = queued
        self._intermittent = any(self.light(t) for t in shares)

    @property
    def light_around(self) -> bool:
        """Some light tenant is around to be protected."""
        return self._intermittent

    def heavy_tenants(self) -> list[str]:
        """Every tenant around that is heavy now (slot leases are not for them)."""
        return [t for t in self._shares if self.heavy(t)]

    def heavy(self, tenant: str) -> bool:
        if not self._intermittent or tenant not in self._shares:
            return False
        mine = self._inflight.get(tenant, 0)
        return mine > 0 and mine >= self._shares[tenant]

    def light(self, tenant: str) -> bool:
        share = self._shares.get(tenant)
        if share is None:  # not seen submitting: the core asks only about queued tenants
            return False
        # under its share, so never heavy too
        return self._inflight.get(tenant, 0) < share and self._queued(tenant) <= LIGHT_QUEUE \
            and self._prefilling.get(tenant, 0) < LIGHT_PREFILLS
