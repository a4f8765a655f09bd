"""``infergridctl tenant remove NAME``: its keys stop working at once; queued work is rejected."""

from __future__ import annotations

from typing import Any

from ._tenant import TenantCommand
from .base import CommandContext


class TenantRemove(TenantCommand):
    name = "tenant.remove"
    help = "remove a tenant (its keys stop working at once)"

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        self.change(ctx, lambda: ctx.core.tenants.remove(self.tenant))
        return {"name": self.args["name"], "removed": True}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        return f"removed tenant {r['name']}"
