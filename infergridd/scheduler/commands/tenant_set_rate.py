"""``infergridctl tenant set-rate NAME [--rpm N] [--tpm N] [--burst N] | --unlimited``.

Hard quotas on top of fair sharing: exceeding one answers that tenant alone
``429`` with ``Retry-After``.  Takes effect at the next request; persisted at once.
"""

from __future__ import annotations

from typing import Any

from . import CommandError
from ._render import rate
from ._tenant import apply, name_arg

NAME = "tenant.set-rate"
HELP = "set a tenant's hard quotas (requests/min, tokens/min, burst) or remove them"


def add_arguments(parser: Any) -> None:
    name_arg(parser)
    parser.add_argument("--rpm", help="requests per minute (0 = unlimited)")
    parser.add_argument("--tpm", help="tokens per minute (0 = unlimited)")
    parser.add_argument("--burst", help="bucket size in requests (default: one minute's worth)")
    parser.add_argument("--unlimited", action="store_true", help="remove every quota")


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name, "rpm": ns.rpm, "tpm": ns.tpm, "burst": ns.burst,
            "unlimited": ns.unlimited}


def execute(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    name = args.get("name", "")
    unlimited = bool(args.get("unlimited"))
    given = {k: args.get(k) for k in ("rpm", "tpm", "burst") if args.get(k) is not None}
    if unlimited and given:
        raise CommandError("--unlimited cannot be combined with --rpm/--tpm/--burst")
    if not unlimited and not given:
        raise CommandError("give --rpm, --tpm, --burst or --unlimited")
    apply(ctx, lambda: ctx.core.tenants.set_rate(name, unlimited=unlimited, **given))
    return {"name": name, "effective": ctx.core.tenants.effective(name)}


def render(r: dict[str, Any]) -> str:
    e = r["effective"]
    return (f"{r['name']}: rpm {rate(e.get('rpm', 0))}, tpm {rate(e.get('tpm', 0))}, "
            f"burst {e.get('burst') or 'one minute'}")
