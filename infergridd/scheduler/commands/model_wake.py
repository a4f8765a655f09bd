"""``infergridctl model wake NAME``: wake a sleeping model and wait until ready.

Like ``model load``, but only for a model that is asleep: a stopped one is
refused (use ``model load``), so that a typo cannot start a cold load.
"""

from __future__ import annotations

from typing import Any

from ...protocol import EngineState
from . import CommandError, _model

NAME = "model.wake"
HELP = "wake a sleeping model's engines and wait until ready"

add_arguments = _model.add_arguments
to_args = _model.to_args
reply_timeout = _model.reply_timeout
render = _model.render


def execute(ctx: Any, args: dict[str, Any]) -> Any:
    name, wait = _model.check(ctx, args)
    states = [e.state for e in ctx.core.engine_statuses() if e.model == name]
    if states and all(s in (EngineState.STOPPED, EngineState.FAILED) for s in states):
        raise CommandError(f"model {name!r} is {states[0]}, not asleep: "
                           f"use `infergridctl model load {name}`")
    ctx.daemon.apply(ctx.core.model_up(name))
    return _model.wait_for(ctx, name, "up", wait, {"action": "wake"})
