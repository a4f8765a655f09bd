"""The shape of the residency commands (``model load|unload|sleep|wake``).

Each changes residency at once (the scheduler's core decides and sends the
engine commands) and then waits, up to ``--wait`` seconds, for the model to
arrive: ``execute`` returns a coroutine, which the scheduler awaits in its
own task, so the control socket keeps answering other commands meanwhile.
``infergridctl`` waits for the answer as long as ``--wait`` asks
(``reply_timeout``).  A command only says which way the model goes
(``target``) and how to start it there (``change``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal

from .base import Arg, Command, CommandContext, CommandError

POLL_S = 0.05
DEFAULT_WAIT_S = 300.0

MODEL_ARGS = (
    Arg("name", metavar="NAME", help="the model's name (models[].name)"),
    Arg("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
        help=f"wait this long for the model to get there (default {DEFAULT_WAIT_S:g}; "
             "0: return at once)"),
)


class ModelCommand(Command):
    """Move one model up (ready) or down (asleep or stopped) and wait until it is there."""

    arguments = MODEL_ARGS
    #: where the model must end up: "up" (ready engines) or "down" (none on the GPU)
    target: ClassVar[Literal["up", "down"]]
    #: the ``action`` field of the result
    action: ClassVar[str]

    def change(self, ctx: CommandContext, model: str) -> dict[str, Any]:
        """Validate what is particular to this command, start the change (``ctx.apply``
        what the core decided) and return extra fields for the result."""
        raise NotImplementedError

    def execute(self, ctx: CommandContext) -> Coroutine[Any, Any, dict[str, Any]]:
        model = str(self.arg("name"))
        if ctx.cfg.model(model) is None:
            known = ", ".join(m.name for m in ctx.cfg.models) or "none configured"
            raise CommandError(f"no model {model!r} (configured: {known})")
        try:
            wait = max(0.0, float(self.arg("wait", DEFAULT_WAIT_S)))
        except (TypeError, ValueError):
            raise CommandError("--wait must be a number of seconds") from None
        result = {"action": self.action, **self.change(ctx, model)}
        return wait_for(ctx, model, self.target, wait, result)

    @classmethod
    def reply_timeout(cls, ns: argparse.Namespace) -> float:
        """The command's own wait, plus margin."""
        return max(0.0, float(ns.wait)) + 5.0

    @classmethod
    def render(cls, r: dict[str, Any]) -> str:
        if not r.get("done"):
            return f"{r['name']}: {r['state']} ({r.get('reason') or 'in progress'})"
        extra = f", {r['drained']} request(s) drained" if r.get("drained") else ""
        return f"{r['name']}: {r['state']} after {r['waited_s']:.1f}s{extra}"


def info(ctx: CommandContext, name: str) -> dict[str, Any]:
    m = next(m for m in ctx.core.model_infos() if m.name == name)
    return {"name": name, "state": m.state, "ready_engines": m.ready_engines,
            "memory_bytes": m.memory_bytes, "inflight": m.inflight, "reason": m.reason}


async def wait_for(ctx: CommandContext, name: str, target: str, wait_s: float,
                   result: dict[str, Any]) -> dict[str, Any]:
    """Poll the core until ``name`` is ``up``/``down`` or ``wait_s`` passed; the result
    says how long it took, or the command fails (exit 1) saying what is still going on."""
    t0 = time.monotonic()
    while not ctx.core.model_settled(name, target):
        waited = time.monotonic() - t0
        failed = info(ctx, name)["reason"]
        if target == "up" and failed.startswith("failed:") and waited > POLL_S:
            raise CommandError(f"model {name!r} {failed}", exit_code=1)
        if waited >= wait_s:
            now = info(ctx, name)
            if wait_s == 0:
                return {**result, **now, "waited_s": 0.0, "done": False}
            raise CommandError(
                f"model {name!r} is still {now['state']} after {waited:.1f}s "
                f"({now['inflight']} in flight{'; ' + now['reason'] if now['reason'] else ''});"
                " it carries on in the background", exit_code=1)
        await asyncio.sleep(POLL_S)
    return {**result, **info(ctx, name), "waited_s": round(time.monotonic() - t0, 3),
            "done": True}
