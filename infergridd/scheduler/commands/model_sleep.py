"""``infergridctl model sleep NAME [--level 1|2]``: drain a model, then put it to sleep.

Level 1 moves the weights to host memory (quick to wake), level 2 drops
them (slower to wake, no host memory used); both free the GPU.  An engine
that cannot sleep is stopped instead.  The next request for it wakes it.
"""

from __future__ import annotations

from typing import Any

from ._model import MODEL_ARGS, ModelCommand
from .base import Arg, CommandContext, CommandError


class ModelSleep(ModelCommand):
    name = "model.sleep"
    help = "drain a model (requests in flight finish), then put its engines to sleep"
    arguments = (*MODEL_ARGS,
                 Arg("--level", type=int, choices=(1, 2), default=None,
                     help="1: weights to host memory; 2: weights dropped "
                          "(default: scheduler.residency.sleep_level)"))
    target = "down"
    action = "sleep"

    def change(self, ctx: CommandContext, model: str) -> dict[str, Any]:
        level = self.arg("level", None) or ctx.cfg.scheduler.residency.sleep_level
        if level not in (1, 2):
            raise CommandError("--level must be 1 or 2")
        drained = ctx.core.model_inflight(model)
        ctx.apply(ctx.core.model_down(model, "sleep", int(level)))
        return {"level": level, "drained": drained}
