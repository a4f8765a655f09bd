"""``Admission``: whether a request may wait in line at all, and every reject the core sends.

A request is refused at once only for reasons of its own or its tenant's
(DESIGN §2): an unknown tenant or model, a model that cannot be served, the
tenant's full queue, its quota, or the policy's own test (``token_bucket``).
Later it may still be refused while it waits: its queue deadline passed, or
its tenant was removed.  Every reject is counted in the tenant's stats here,
so the counts and the messages cannot disagree.

Admission is also the way back in after a restart: a request a front door
held while the scheduler was away goes through the same checks, so a
restart is no way around a quota.
"""

from __future__ import annotations

from .. import protocol as p
from ..config import Config
from .books import Books
from .engine_table import EngineTable
from .headroom import Headroom
from .policy import Policy
from .quotas import Limits, Quotas
from .record import Record, RecordState
from .residency import Residency
from .send import Send
from .tenants import DEFAULT_TENANT, TenantRegistry

#: Retry-After for rejections that no clock can predict (full queue, queue timeout)
RETRY_AFTER_S = 1.0


class Admission:
    """Admission checks, queue deadlines and tenant removals; the rejects they send."""

    def __init__(self, cfg: Config, tenants: TenantRegistry, policy: Policy, quotas: Quotas,
                 headroom: Headroom, residency: Residency, books: Books,
                 engines: EngineTable) -> None:
        self.cfg = cfg
        self.tenants = tenants
        self.policy = policy
        self.quotas = quotas
        self.headroom = headroom
        self.residency = residency
        self.books = books
        self.engines = engines
        self._tenant_names = tenants.names()
        self._tenants_version = tenants.version

    # ================================================================== admission
    def admit(self, peer: str, s: p.RequestHeader, now: float) -> list[Send]:
        """Every admission check, then queue it; returns the Reject, or [] when queued."""
        tenant = s.tenant or (DEFAULT_TENANT if self.cfg.auth == "none" else "")
        t = self.tenants.get(tenant)
        if t is None:
            return [self.reject(peer, s.request_id, tenant, 401, "invalid_api_key",
                                f"unknown tenant {tenant!r}")]
        if not self._model_known(s.model):
            return [self.reject(peer, s.request_id, tenant, 404, "model_not_found",
                                f"the model {s.model!r} does not exist")]
        refused = self.residency.refusal(s.model, self.engines.views(s.model))
        if refused is not None:
            return [self.reject(peer, s.request_id, tenant, 503, "model_unavailable", *refused)]
        limit = t.max_queued or self.cfg.scheduler.max_queued_per_tenant
        if self.books.queued_n(tenant) >= limit:
            return [self.reject(peer, s.request_id, tenant, 429, "tenant_queue_full",
                                f"tenant {tenant!r} already has {limit} requests queued",
                                RETRY_AFTER_S)]
        rec = self.books.new_record(s.request_id, tenant, s.model, s.prompt_tokens,
                                    s.max_tokens, s.priority, s.submitted_at, peer)
        cost = rec.prompt_tokens + rec.max_tokens
        limits = Limits(rpm=t.rpm, tpm=t.tpm, burst=t.burst)
        rej = self.quotas.check(s.request_id, tenant, cost, limits, now) \
            or self.policy.admit(rec, now)
        if rej is not None:
            return [self.send_reject(peer, rej, tenant)]
        self.quotas.charge(tenant, cost, now)
        rec.quota_tokens = cost if t.tpm > 0 else 0
        self.books.enqueue(rec, now)
        return []

    def admit_running(self, peer: str, s: p.RequestHeader, now: float) -> Record | None:
        """A request a front door already runs on a slot lease (leases.py): queued here
        whatever the queue bound, quota or residency say (the caller starts it at once),
        its quota charged, into debt if need be.  None for a tenant that does not exist."""
        tenant = s.tenant or (DEFAULT_TENANT if self.cfg.auth == "none" else "")
        t = self.tenants.get(tenant)
        if t is None:
            return None
        rec = self.books.new_record(s.request_id, tenant, s.model, s.prompt_tokens,
                                    s.max_tokens, s.priority, s.submitted_at, peer)
        cost = rec.prompt_tokens + rec.max_tokens
        self.quotas.check(s.request_id, tenant, cost, Limits(rpm=t.rpm, tpm=t.tpm,
                                                             burst=t.burst), now)  # syncs
        self.quotas.charge(tenant, cost, now)
        rec.quota_tokens = cost if t.tpm > 0 else 0
        self.books.enqueue(rec, now)
        return rec

    def _model_known(self, model: str) -> bool:
        return self.cfg.model(model) is not None or self.engines.serves(model)

    def limits_of(self, tenant: str) -> Limits | None:
        """A tenant's current quota limits; None for a tenant that does not exist."""
        t = self.tenants.get(tenant)
        return None if t is None else Limits(rpm=t.rpm, tpm=t.tpm, burst=t.burst)

    # ================================================================== rejects
    def reject(self, peer: str, request_id: str, tenant: str, status: int, code: str,
               reason: str, retry_after_s: float | None = None) -> Send:
        """A Reject for ``peer``, counted in the tenant's stats."""
        return self.send_reject(peer, p.Reject(request_id=request_id, http_status=status,
                                               code=code, reason=reason,
                                               retry_after_s=retry_after_s), tenant)

    def send_reject(self, peer: str, rej: p.Reject, tenant: str) -> Send:
        if tenant in self.tenants:
            self.books.count_reject(tenant, rej.code)
        return Send(peer, rej)

    # ================================================================== while waiting
    def expire(self, now: float) -> list[Send]:
        """503 for queued requests past their queue deadline."""
        out = []
        for rec in self.books.due_deadlines(now):
            waited = now - rec.enqueued_at
            self.books.drop_queued(rec, now)
            out.append(self.reject(rec.peer, rec.request_id, rec.tenant, 503, "queue_timeout",
                                   f"waited {waited:.1f}s in the queue without a free engine",
                                   RETRY_AFTER_S))
        return out

    def apply_tenant_changes(self, now: float) -> list[Send]:
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
        for rec in list(self.books.records.values()):
            if rec.state is RecordState.QUEUED and rec.tenant not in self.tenants:
                self.books.drop_queued(rec, now)
                out.append(Send(rec.peer, p.Reject(
                    request_id=rec.request_id, http_status=401, code="invalid_api_key",
                    reason=f"tenant {rec.tenant!r} was removed")))
        for n in gone:
            self.policy.forget(n)
            self.quotas.forget(n)
            self.headroom.forget_tenant(n)
            self.books.forget_counts(n)
        return out
