"""``infergridctl tenant remove NAME``: its keys stop working at once; queued work is rejected."""

from __future__ import annotations

from typing import Any

from ._tenant import apply, name_arg

NAME = "tenant.remove"
HELP = "remove a tenant (its keys stop working at once)"


def add_arguments(parser: Any) -> None:
    name_arg(parser)


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name}


def execute(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    apply(ctx, lambda: ctx.core.tenants.remove(args.get("name", "")))
    return {"name": args["name"], "removed": True}


def render(r: dict[str, Any]) -> str:
    return f"removed tenant {r['name']}"
