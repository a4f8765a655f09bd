"""``infergridctl tenant set-rate NAME [--rpm N] [--tpm N] [--burst N] | --unlimited``.

Hard quotas on top of fair sharing: exceeding one answers that tenant alone
``429`` with ``Retry-After``.  Takes effect at the next request; persisted at once.
"""

from __future__ import annotations

from typing import Any

from ._render import rate
from ._tenant import NAME_ARG, TenantCommand
from .base import Arg, CommandContext, CommandError

LIMITS = ("rpm", "tpm", "burst")


class TenantSetRate(TenantCommand):
    name = "tenant.set-rate"
    help = "set a tenant's hard quotas (requests/min, tokens/min, burst) or remove them"
    arguments = (
        NAME_ARG,
        Arg("--rpm", help="requests per minute (0 = unlimited)"),
        Arg("--tpm", help="tokens per minute (0 = unlimited)"),
        Arg("--burst", help="bucket size in requests (default: one minute's worth)"),
        Arg("--unlimited", action="store_true", help="remove every quota"),
    )

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        name = self.tenant
        unlimited = bool(self.arg("unlimited", None))
        given = {k: self.args[k] for k in LIMITS if self.args.get(k) is not None}
        if unlimited and given:
            raise CommandError("--unlimited cannot be combined with --rpm/--tpm/--burst")
        if not unlimited and not given:
            raise CommandError("give --rpm, --tpm, --burst or --unlimited")
        self.change(ctx, lambda: ctx.core.tenants.set_rate(name, unlimited=unlimited, **given))
        return {"name": name, "effective": ctx.core.tenants.effective(name)}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        e = r["effective"]
        return (f"{r['name']}: rpm {rate(e.get('rpm', 0))}, tpm {rate(e.get('tpm', 0))}, "
                f"burst {e.get('burst') or 'one minute'}")
