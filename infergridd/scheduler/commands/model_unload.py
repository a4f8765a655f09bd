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

from ._model import ModelCommand
from .base import CommandContext


class ModelUnload(ModelCommand):
    name = "model.unload"
    help = "drain a model (requests in flight finish), stop its engines, keep it stopped"
    target = "down"
    action = "unload"

    def change(self, ctx: CommandContext, model: str) -> dict[str, Any]:
        drained = ctx.core.model_inflight(model)
        ctx.apply(ctx.core.model_down(model, "stop"))
        return {"drained": drained}
