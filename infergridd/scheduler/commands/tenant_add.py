"""``infergridctl tenant add NAME [--weight W]``: a new tenant and its first API key.

The key is printed once; only its sha256 is stored.
"""

from __future__ import annotations

from typing import Any

from ._tenant import apply, name_arg

NAME = "tenant.add"
HELP = "add a tenant; prints its new API key once"


def add_arguments(parser: Any) -> None:
    name_arg(parser)
    parser.add_argument("--weight", type=str, default="1", help="share weight (> 0), default 1")


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name, "weight": ns.weight}


def execute(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    key = apply(ctx, lambda: ctx.core.tenants.add(args.get("name", ""), weight=args.get("weight", 1)))
    return {"name": args["name"], "api_key": key}


def render(r: dict[str, Any]) -> str:
    return (f"added tenant {r['name']}\napi key (shown once, store it now): {r['api_key']}")
