"""``token_bucket``: the comparison arm that imitates request-count rate limiters.

Each tenant gets ``scheduler.token_bucket.rate_per_s`` requests per second
with a burst of ``burst``; beyond that it gets ``429`` with ``Retry-After``.
What is admitted runs in FIFO order.  This is what most gateways do, and the
benchmark shows why it is not fairness: it counts requests, not tokens, and it
refuses work even when the engine is idle.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import Config
from ..protocol import Reject
from .policy import FifoBase, TenantView
from .quotas import Bucket
from .record import Record


class TokenBucketPolicy(FifoBase):
    name = "token_bucket"

    def __init__(self, cfg: Config, tenants: TenantView) -> None:
        super().__init__(cfg, tenants)
        tb = cfg.scheduler.token_bucket
        self.rate = max(0.0, tb.rate_per_s)
        self.burst = max(1.0, tb.burst)
        self._buckets: dict[str, Bucket] = {}

    def _bucket(self, tenant: str, now: float) -> Bucket:
        b = self._buckets.get(tenant)
        if b is None:
            b = self._buckets[tenant] = Bucket(self.rate, self.burst, self.burst, now)
        return b

    def admit(self, req: Record, now: float) -> Reject | None:
        b = self._bucket(req.tenant, now)
        wait = b.wait_for(1, now)
        if wait > 0:
            return Reject(
                request_id=req.request_id, http_status=429, code="rate_limit_exceeded",
                reason=f"tenant {req.tenant!r} is over {self.rate:g} requests/s",
                retry_after_s=60.0 if math.isinf(wait) else float(max(1, math.ceil(wait))),
            )
        b.take(1, now)
        return None

    def forget(self, tenant: str) -> None:
        self._buckets.pop(tenant, None)

    def export(self, now: float) -> dict[str, Any]:
        levels = {}
        for tenant, b in self._buckets.items():
            b.refill(now)
            if b.level < b.capacity:
                levels[tenant] = round(b.level, 3)
        return {"levels": levels} if levels else {}

    def import_(self, data: dict[str, Any], now: float) -> None:
        levels = data.get("levels")
        if not isinstance(levels, dict):
            return
        for tenant, level in levels.items():
            if isinstance(level, (int, float)) and not isinstance(level, bool) \
                    and math.isfinite(level):
                self._bucket(str(tenant), now).level = min(self.burst, float(level))
