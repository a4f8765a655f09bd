"""What of the core survives a scheduler restart: counters, quota levels, tenant settings.

Requests do not travel this way (the peers' ``Hello`` brings them back);
only what no peer knows does, so a tenant cannot clear its debt or its quota
by restarting the scheduler.  The daemon writes ``export_state``'s output to
the state dir and hands it back through ``import_state``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .admission import Admission
from .policy import Policy
from .quotas import Quotas
from .tenants import TenantRegistry

STATE_FORMAT = 1


def export_state(tenants: TenantRegistry, policy: Policy, quotas: Quotas,
                 now: float) -> dict[str, Any]:
    """Counters, quota levels and runtime tenant settings, JSON-able.

    Stable when nothing happens (no timestamps), so the daemon can skip
    writing an unchanged file."""
    return {
        "format": STATE_FORMAT,
        "tenants": tenants.export(),
        "policy": {policy.name: policy.export(now)},
        "quotas": quotas.export(now),
    }


def import_state(state: dict[str, Any], tenants: TenantRegistry, policy: Policy,
                 quotas: Quotas, admission: Admission, clock: Callable[[], float]) -> None:
    """Restore ``export_state``'s output; ``ValueError`` if the tenant part is malformed.

    Tenants the state removed are then applied like any removal (their queued
    requests rejected, their counters dropped)."""
    if not isinstance(state, dict):
        raise ValueError("scheduler state: expected a mapping")
    now = clock()
    if "tenants" in state:
        tenants.import_(state["tenants"])
    pol = state.get("policy")
    if isinstance(pol, dict) and isinstance(pol.get(policy.name), dict):
        policy.import_(pol[policy.name], now)
    quotas_state = state.get("quotas")
    if isinstance(quotas_state, dict):
        quotas.import_(quotas_state, admission.limits_of, now)
    admission.apply_tenant_changes(now)
