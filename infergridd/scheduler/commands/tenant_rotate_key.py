"""``infergridctl tenant rotate-key NAME``: a new key; the old ones stop working at once."""

from __future__ import annotations

from typing import Any

from ._tenant import TenantCommand
from .base import CommandContext


class TenantRotateKey(TenantCommand):
    name = "tenant.rotate-key"
    help = "replace a tenant's API keys with a new one (printed once)"

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        key = self.change(ctx, lambda: ctx.core.tenants.rotate_key(self.tenant))
        return {"name": self.args["name"], "api_key": key}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        return f"new api key for {r['name']} (shown once, store it now): {r['api_key']}"
