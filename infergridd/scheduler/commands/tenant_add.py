"""``infergridctl tenant add NAME [--weight W]``: a new tenant and its first API key.

The key is printed once; only its sha256 is stored.
"""

from __future__ import annotations

from typing import Any

from ._tenant import NAME_ARG, TenantCommand
from .base import Arg, CommandContext


class TenantAdd(TenantCommand):
    name = "tenant.add"
    help = "add a tenant; prints its new API key once"
    arguments = (NAME_ARG, Arg("--weight", type=str, default="1",
                               help="share weight (> 0), default 1"))

    def execute(self, ctx: CommandContext) -> dict[str, Any]:
        key = self.change(ctx, lambda: ctx.core.tenants.add(self.tenant,
                                                            weight=self.arg("weight", 1)))
        return {"name": self.args["name"], "api_key": key}

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        return f"added tenant {r['name']}\napi key (shown once, store it now): {r['api_key']}"
