"""``infergridctl model sleep NAME [--level 1|2]``: drain a model, then put it to sleep.

Level 1 moves the weights to host memory (quick to wake), level 2 drops
them (slower to wake, no host memory used); both free the GPU.  An engine
that cannot sleep is stopped instead.  The next request for it wakes it.
"""

from __future__ import annotations

from typing import Any

from . import CommandError, _model

NAME = "model.sleep"
HELP = "drain a model (requests in flight finish), then put its engines to sleep"

reply_timeout = _model.reply_timeout
render = _model.render


def add_arguments(parser: Any) -> None:
    _model.add_arguments(parser)
    parser.add_argument("--level", type=int, choices=(1, 2), default=None,
                        help="1: weights to host memory; 2: weights dropped "
                             "(default: scheduler.residency.sleep_level)")


def to_args(ns: Any) -> dict[str, Any]:
    return {**_model.to_args(ns), "level": ns.level}


def execute(ctx: Any, args: dict[str, Any]) -> Any:
    name, wait = _model.check(ctx, args)
    level = args.get("level") or ctx.cfg.scheduler.residency.sleep_level
    if level not in (1, 2):
        raise CommandError("--level must be 1 or 2")
    drained = ctx.core.model_inflight(name)
    ctx.daemon.apply(ctx.core.model_down(name, "sleep", int(level)))
    return _model.wait_for(ctx, name, "down", wait,
                           {"action": "sleep", "level": level, "drained": drained})
