"""``infergridctl model load NAME``: start or wake a model's engines and wait until ready.

Room is made as for a request (drained victims, never a pinned model), but an
operator's load does not count against the swap limit.  Clears a previous
``model unload``.
"""

from __future__ import annotations

from typing import Any

from ._model import ModelCommand
from .base import CommandContext


class ModelLoad(ModelCommand):
    name = "model.load"
    help = "start (or wake) a model's engines, making room if needed, and wait until ready"
    target = "up"
    action = "load"

    def change(self, ctx: CommandContext, model: str) -> dict[str, Any]:
        ctx.apply(ctx.core.model_up(model))
        return {}
