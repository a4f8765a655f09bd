"""``infergridctl tenant set-weight NAME W``: the tenant's share while everyone is backlogged."""

from __future__ import annotations

from typing import Any

from ._tenant import apply, name_arg

NAME = "tenant.set-weight"
HELP = "set a tenant's fair-share weight (> 0)"


def add_arguments(parser: Any) -> None:
    name_arg(parser)
    parser.add_argument("weight", help="weight, a number greater than 0")


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name, "weight": ns.weight}


def execute(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("name", "")
    apply(ctx, lambda: ctx.core.tenants.set_weight(name, args.get("weight")))
    return {"name": name, "effective": ctx.core.tenants.effective(name)}


def render(r: dict[str, Any]) -> str:
    return f"{r['name']}: weight {r['effective']['weight']:g}"
