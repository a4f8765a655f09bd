"""``infergridctl tenant set-weight NAME W``: the tenant's share while everyone is backlogged."""

from __future__ import annotations

from typing import Any

from ._tenant import NAME_ARG, TenantCommand
from .base import Arg, CommandContext


class TenantSetWeight(TenantCommand):
    name = "tenant.set-weight"
    help = "set a tenant's fair-share weight (> 0)"
    arguments = (NAME_ARG, Arg("weight", help="weight, a number greater than 0"))

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        name = self.tenant
        self.change(ctx, lambda: ctx.core.tenants.set_weight(name, self.arg("weight", None)))
        return {"name": name, "effective": ctx.core.tenants.effective(name)}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        return f"{r['name']}: weight {r['effective']['weight']:g}"
