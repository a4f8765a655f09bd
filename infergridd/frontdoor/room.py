"""The front door's waiting room, bounded in requests and in bytes (DESIGN §10).

Everything a request holds in the front door before it is dispatched — its
body as it is read, then the one copy of it kept while the scheduler decides
— is counted here, per tenant and in all, from the moment the request is
authenticated until it is dispatched, refused or abandoned.  Without a bound
one tenant (or one key) queuing 1 MiB bodies as fast as it can would fill the
front door's memory and cut every other tenant's streams with it.

Two answers, so a client can tell its own fault from the appliance's:
``429 tenant_queue_full`` when the tenant is over its own bound (the
appliance is fine; the tenant should slow down), ``503 overloaded`` only
when the whole front door is full.  The per-tenant request count is the
scheduler's rule (``scheduler.max_queued_per_tenant``, ``tenants[].max_queued``,
which ``infergridctl`` can change at runtime); the front door applies its
configured view of it only while the scheduler is away, when nobody else
would.  Dispatched requests are not counted: the engines' seats bound them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Limits, parse_size
from .errors import ApiError

RETRY_AFTER_S = 1.0


class Room:
    """Counts what waits; ``enter`` gives the ``Ticket`` a request holds while it waits."""

    def __init__(self, limits: Limits, tenant_count_limit: Callable[[str], int]) -> None:
        self.max_bytes = parse_size(limits.max_queued_bytes)
        self.max_tenant_bytes = parse_size(limits.max_queued_bytes_per_tenant)
        self.max_requests = limits.max_queued_requests
        #: the per-tenant request bound to apply now (0: none, the scheduler applies it)
        self.tenant_count_limit = tenant_count_limit
        self.bytes = 0
        self.requests = 0
        self.tenant_bytes: dict[str, int] = {}
        self.tenant_requests: dict[str, int] = {}

    def enter(self, tenant: str) -> Ticket:
        """Room for one more request of ``tenant`` (no bytes yet), or the refusal."""
        limit = self.tenant_count_limit(tenant)
        have = self.tenant_requests.get(tenant, 0)
        if limit and have >= limit:
            raise ApiError(429, "tenant_queue_full",
                           f"tenant {tenant!r} already has {limit} requests queued",
                           retry_after_s=RETRY_AFTER_S)
        if self.requests >= self.max_requests:
            raise _overloaded(f"{self.requests} requests are waiting")
        self.requests += 1
        self.tenant_requests[tenant] = have + 1
        return Ticket(self, tenant)

    def _grow(self, tenant: str, n: int) -> None:
        have = self.tenant_bytes.get(tenant, 0)
        if have + n > self.max_tenant_bytes:
            raise ApiError(429, "tenant_queue_full",
                           f"tenant {tenant!r} has {have} bytes of requests waiting; "
                           f"the limit is {self.max_tenant_bytes}",
                           retry_after_s=RETRY_AFTER_S)
        if self.bytes + n > self.max_bytes:
            raise _overloaded(f"{self.bytes} bytes of requests are waiting")
        self.bytes += n
        self.tenant_bytes[tenant] = have + n

    def _release(self, tenant: str, nbytes: int) -> None:
        self.bytes -= nbytes
        self.requests -= 1
        left = self.tenant_bytes.get(tenant, 0) - nbytes
        if left > 0:
            self.tenant_bytes[tenant] = left
        else:
            self.tenant_bytes.pop(tenant, None)
        n = self.tenant_requests.get(tenant, 0) - 1
        if n > 0:
            self.tenant_requests[tenant] = n
        else:
            self.tenant_requests.pop(tenant, None)


def _overloaded(what: str) -> ApiError:
    return ApiError(503, "overloaded", f"the front door is full ({what}); try again shortly",
                    retry_after_s=RETRY_AFTER_S)


class Ticket:
    """One request's place in the room: its bytes grow as its body is read; ``leave``
    (idempotent) gives everything back — at dispatch, refusal, or when the client leaves."""

    __slots__ = ("room", "tenant", "nbytes", "left")

    def __init__(self, room: Room, tenant: str) -> None:
        self.room = room
        self.tenant = tenant
        self.nbytes = 0
        self.left = False

    def reserve(self, total: int) -> None:
        """Hold ``total`` bytes in all for this request (never less than already held)."""
        if total > self.nbytes and not self.left:
            self.room._grow(self.tenant, total - self.nbytes)
            self.nbytes = total

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.room._release(self.tenant, self.nbytes)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()
