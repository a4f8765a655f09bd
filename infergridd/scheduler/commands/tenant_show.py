"""``infergridctl tenant show NAME``: one tenant in full."""

from __future__ import annotations

from typing import Any

import msgspec

from ._render import rate, table
from ._tenant import TenantCommand
from .base import CommandContext, CommandError


class TenantShow(TenantCommand):
    name = "tenant.show"
    help = "show one tenant: settings, queue, counters, rejections"
    read_only = True

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        name = self.tenant
        if name not in ctx.core.tenants.names():
            raise CommandError(f"unknown tenant {name!r}")
        stats = next((t for t in ctx.core.tenant_stats() if t.name == name), None)
        return {
            "name": name,
            "configured": ctx.core.tenants.configured(name),
            "effective": ctx.core.tenants.effective(name),
            "stats": msgspec.structs.asdict(stats) if stats else {},
        }

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        """Settings as configured and as applied (a table, like ``tenant list``), then the
        queue and the counters; ``--json`` prints the result itself."""
        conf, eff, st = r.get("configured"), r.get("effective") or {}, r.get("stats") or {}
        keys = [k for k in _SETTINGS if k in eff] + sorted(set(eff) - set(_SETTINGS))
        rows = [[k, "-" if conf is None else _value(k, conf.get(k)), _value(k, eff.get(k))]
                for k in keys]
        rejected = ", ".join(f"{code} {n}" for code, n in sorted(
            (st.get("rejected") or {}).items())) or "none"
        head = f"tenant {r['name']}" + ("  (added at run time)" if conf is None else "")
        return "\n".join([
            head, "",
            table(["SETTING", "CONFIGURED", "EFFECTIVE"], rows), "",
            table(["QUEUED", "INFLIGHT", "COUNTER", "TOKENS_IN", "TOKENS_OUT", "REJECTED"],
                  [[st.get("queued", 0), st.get("inflight", 0), round(st.get("counter", 0.0), 1),
                    st.get("tokens_in", 0), st.get("tokens_out", 0), rejected]]),
        ])


#: the order settings are shown in; quotas read "unlimited" at 0, like ``tenant list``
_SETTINGS = ("weight", "band", "rpm", "tpm", "burst", "max_queued", "queue_deadline_s", "keys")
_UNLIMITED_AT_0 = {"rpm", "tpm"}


def _value(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in _UNLIMITED_AT_0:
        return rate(v)
    return f"{v:g}" if isinstance(v, float) else str(v)
