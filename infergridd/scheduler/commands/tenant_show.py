"""``infergridctl tenant show NAME``: one tenant in full."""

from __future__ import annotations

import json
from typing import Any

import msgspec

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
        return json.dumps(r, indent=2, sort_keys=True)
