"""Optional hard per-tenant quotas: requests/min and tokens/min as token buckets.

Quotas sit on top of fair sharing and answer only the tenant over its own
limit (``429 rate_limit_exceeded`` with ``Retry-After``); they never depend on
what other tenants do.

* ``rpm``: a bucket of ``burst`` requests (0: one minute's worth, ``rpm``),
  refilled at ``rpm/60`` per second; each admitted request takes one.
* ``tpm``: a bucket of one minute's worth of tokens (``tpm``), refilled at
  ``tpm/60`` per second.  At admission a request takes its prompt estimate
  plus ``max_tokens`` (the most it can cost, so a burst of long requests
  cannot overshoot); at ``Done`` the bucket is settled to the engine's
  reported usage (``refund``): the unused part is given back, and a request
  that used *more* than it reserved (its prompt was larger than the
  estimate) is debited the difference, into debt if need be, so the next
  request waits.  A request that never ran gets all of it back.
* A request that costs more than a whole bucket is admitted when the bucket
  is full and leaves it in debt, rather than being refused forever.

Everything runs on the injected clock; levels are exported so a tenant cannot
reset its quota by restarting the scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..protocol import Reject


@dataclass
class Bucket:
    """A token bucket on an injected clock. ``level`` may go negative (debt)."""

    rate: float  # tokens per second
    capacity: float
    level: float
    stamp: float  # clock of the last refill

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most a full bucket) can be taken; 0 when it can now."""
        self.refill(now)
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)

    def resize(self, rate: float, capacity: float, now: float) -> None:
        """New settings keep the current debt or fill level (clamped to the new size)."""
        self.refill(now)
        self.rate, self.capacity = rate, capacity
        self.level = min(self.level, capacity)


@dataclass(frozen=True)
class Limits:
    rpm: float = 0.0
    tpm: float = 0.0
    burst: float = 0.0


def _retry(wait: float) -> float:
    """Retry-After in whole seconds, at least 1 (HTTP sends an integer)."""
    if math.isinf(wait):
        return 60.0
    return float(max(1, math.ceil(wait - 1e-9)))


class Quotas:
    """Per-tenant rpm/tpm buckets; a tenant with no limits has no buckets at all."""

    def __init__(self) -> None:
        self._req: dict[str, Bucket] = {}
        self._tok: dict[str, Bucket] = {}

    def _sync(self, tenant: str, limits: Limits, now: float) -> None:
        """Create, resize or drop the tenant's buckets to match its current limits."""
        for table, per_min, cap in (
            (self._req, limits.rpm, limits.burst or limits.rpm),
            (self._tok, limits.tpm, limits.tpm),
        ):
            b = table.get(tenant)
            if per_min <= 0:
                table.pop(tenant, None)
            elif b is None:
                table[tenant] = Bucket(per_min / 60.0, cap, cap, now)
            elif b.rate != per_min / 60.0 or b.capacity != cap:
                b.resize(per_min / 60.0, cap, now)

    def check(self, request_id: str, tenant: str, tokens: int, limits: Limits,
              now: float) -> Reject | None:
        """Would this request fit now?  Takes nothing; ``charge`` does."""
        self._sync(tenant, limits, now)
        waits = []
        if tenant in self._req:
            waits.append(("requests per minute", self._req[tenant].wait_for(1, now)))
        if tenant in self._tok:
            waits.append(("tokens per minute", self._tok[tenant].wait_for(tokens, now)))
        over = [(w, what) for what, w in waits if w > 0]
        if not over:
            return None
        wait, what = max(over)
        return Reject(
            request_id=request_id, http_status=429, code="rate_limit_exceeded",
            reason=f"tenant {tenant!r} is over its {what} quota",
            retry_after_s=_retry(wait),
        )

    def charge(self, tenant: str, tokens: int, now: float) -> None:
        if tenant in self._req:
            self._req[tenant].take(1, now)
        if tenant in self._tok:
            self._tok[tenant].take(tokens, now)

    def refund(self, tenant: str, tokens: int, now: float) -> None:
        """Settle the tpm bucket: give back ``tokens`` charged at admission but not used,
        or, when ``tokens`` is negative (the engine counted more than was reserved), take
        the difference, into debt if need be.  Dropping a negative correction was the
        hole a prompt the estimate undercounted went through for free."""
        b = self._tok.get(tenant)
        if b is None or not tokens:
            return
        if tokens > 0:
            b.give(tokens, now)
        else:
            b.take(-tokens, now)

    def forget(self, tenant: str) -> None:
        self._req.pop(tenant, None)
        self._tok.pop(tenant, None)

    def levels(self, tenant: str, now: float) -> dict[str, float]:
        out = {}
        if tenant in self._req:
            self._req[tenant].refill(now)
            out["requests"] = self._req[tenant].level
        if tenant in self._tok:
            self._tok[tenant].refill(now)
            out["tokens"] = self._tok[tenant].level
        return out

    # ------------------------------------------------------------------ persistence
    def export(self, now: float) -> dict[str, Any]:
        """Only buckets below full: a full bucket is the same as none after a restart."""
        out: dict[str, Any] = {}
        for kind, table in (("requests", self._req), ("tokens", self._tok)):
            levels = {}
            for tenant, b in table.items():
                b.refill(now)
                if b.level < b.capacity:
                    levels[tenant] = round(b.level, 3)
            if levels:
                out[kind] = levels
        return out

    def import_(self, data: dict[str, Any], limits_of: Any, now: float) -> None:
        """Restore levels as of ``now`` (time spent down counts as nothing: no free refill)."""
        for kind, table in (("requests", self._req), ("tokens", self._tok)):
            levels = data.get(kind)
            if not isinstance(levels, dict):
                continue
            for tenant, level in levels.items():
                limits = limits_of(tenant)
                if limits is None or not isinstance(level, (int, float)) \
                        or isinstance(level, bool) or not math.isfinite(level):
                    continue
                self._sync(tenant, limits, now)
                b = table.get(tenant)
                if b is not None:
                    b.level = min(b.capacity, float(level))
                    b.stamp = now
