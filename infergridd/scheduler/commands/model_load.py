"""``infergridctl model load NAME``: start or wake a model's engines and wait until ready.

Room is made as for a request (drained victims, never a pinned model), but an
operator's load does not count against the swap limit.  Clears a previous
``model unload``.
"""

from __future__ import annotations

from typing import Any

from . import _model

NAME = "model.load"
HELP = "start (or wake) a model's engines, making room if needed, and wait until ready"

add_arguments = _model.add_arguments
to_args = _model.to_args
reply_timeout = _model.reply_timeout
render = _model.render


def execute(ctx: Any, args: dict[str, Any]) -> Any:
    name, wait = _model.check(ctx, args)
    ctx.daemon.apply(ctx.core.model_up(name))
    return _model.wait_for(ctx, name, "up", wait, {"action": "load"})
