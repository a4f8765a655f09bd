"""``infergridctl tenant list``: configured and effective settings of every tenant.

"Configured" is what the YAML file says; "effective" is what the scheduler
applies now, after runtime changes made with ``infergridctl tenant …``.
"""

from __future__ import annotations

from typing import Any

from ._render import rate, table
from .base import Command, CommandContext


class TenantList(Command):
    name = "tenant.list"
    help = "list tenants with configured and effective weight and quotas"
    read_only = True

    def execute(self, ctx: CommandContext) -> list[dict[str, Any]]:
        stats = {t.name: t for t in ctx.core.tenant_stats()}
        out = []
        for name in ctx.core.tenants.names():
            s = stats.get(name)
            out.append({
                "name": name,
                "configured": ctx.core.tenants.configured(name),
                "effective": ctx.core.tenants.effective(name),
                "queued": s.queued if s else 0,
                "inflight": s.inflight if s else 0,
                "counter": s.counter if s else 0.0,
            })
        return out

    @classmethod
    def render(cls, r: list[dict[str, Any]]) -> str:
        def cfg(t: dict[str, Any], key: str) -> str:
            c = t["configured"]
            if c is None:
                return "-"
            return rate(c.get(key, 0)) if key != "weight" else f"{c['weight']:g}"

        return table(
            ["TENANT", "WEIGHT(cfg)", "WEIGHT", "RPM(cfg)", "RPM", "TPM(cfg)", "TPM", "QUEUED",
             "INFLIGHT", "COUNTER"],
            [[t["name"], cfg(t, "weight"), f"{t['effective']['weight']:g}", cfg(t, "rpm"),
              rate(t["effective"].get("rpm", 0)), cfg(t, "tpm"),
              rate(t["effective"].get("tpm", 0)), t["queued"], t["inflight"],
              round(t["counter"], 1)] for t in r])
