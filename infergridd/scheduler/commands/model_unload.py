"""``infergridctl model unload NAME``: drain a model, stop its engines, keep it stopped.

No new request is dispatched to it; the ones in flight finish (however long
that takes: the answer says how long it waited); then its engines are
stopped and its GPU memory is free.  Its queued requests, and new ones, get
503 until ``model load``.  Works on pinned models too (pinning only stops
*automatic* eviction).  The supervisor remembers the unload (its engines'
intent files, reported as ``EngineStatus.unloaded``), so it holds across a
scheduler or supervisor restart; a restart of the whole appliance begins
from the configuration.
"""

from __future__ import annotations

from typing import Any

from . import _model

NAME = "model.unload"
HELP = "drain a model (requests in flight finish), stop its engines, keep it stopped"

add_arguments = _model.add_arguments
to_args = _model.to_args
reply_timeout = _model.reply_timeout
render = _model.render


def execute(ctx: Any, args: dict[str, Any]) -> Any:
    name, wait = _model.check(ctx, args)
    drained = ctx.core.model_inflight(name)
    ctx.daemon.apply(ctx.core.model_down(name, "stop"))
    return _model.wait_for(ctx, name, "down", wait, {"action": "unload", "drained": drained})
