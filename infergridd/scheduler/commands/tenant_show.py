"""``infergridctl tenant show NAME``: one tenant in full."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from . import CommandError
from ._tenant import name_arg

NAME = "tenant.show"
HELP = "show one tenant: settings, queue, counters, rejections"


def add_arguments(parser: Any) -> None:
    name_arg(parser)


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name}


def execute(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("name", "")
    if name not in ctx.core.tenants.names():
        raise CommandError(f"unknown tenant {name!r}")
    stats = next((t for t in ctx.core.tenant_stats() if t.name == name), None)
    return {
        "name": name,
        "configured": ctx.core.tenants.configured(name),
        "effective": ctx.core.tenants.effective(name),
        "stats": msgspec.structs.asdict(stats) if stats else {},
    }


def render(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2, sort_keys=True)
