"""``infergridctl model wake NAME``: wake a sleeping model and wait until ready.

Like ``model load``, but only for a model that is asleep: a stopped one is
refused (use ``model load``), so that a typo cannot start a cold load.
"""

from __future__ import annotations

from typing import Any

from ...protocol import EngineState
from ._model import ModelCommand
from .base import CommandContext, CommandError

NOT_ASLEEP = (EngineState.STOPPED, EngineState.FAILED)


class ModelWake(ModelCommand):
    name = "model.wake"
    help = "wake a sleeping model's engines and wait until ready"
    target = "up"
    action = "wake"

    def change(self, ctx: CommandContext, model: str) -> dict[str, Any]:
        states = [e.state for e in ctx.core.engine_statuses() if e.model == model]
        if states and all(s in NOT_ASLEEP for s in states):
            raise CommandError(f"model {model!r} is {states[0]}, not asleep: "
                               f"use `infergridctl model load {model}`")
        ctx.apply(ctx.core.model_up(model))
        return {}
