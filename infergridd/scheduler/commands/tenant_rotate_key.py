"""``infergridctl tenant rotate-key NAME``: a new key; the old ones stop working at once."""

from __future__ import annotations

from typing import Any

from ._tenant import apply, name_arg

NAME = "tenant.rotate-key"
HELP = "replace a tenant's API keys with a new one (printed once)"


def add_arguments(parser: Any) -> None:
    name_arg(parser)


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name}


def execute(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    key = apply(ctx, lambda: ctx.core.tenants.rotate_key(args.get("name", "")))
    return {"name": args["name"], "api_key": key}


def render(r: dict[str, Any]) -> str:
    return f"new api key for {r['name']} (shown once, store it now): {r['api_key']}"
