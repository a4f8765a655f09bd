"""Shared parts of the ``model *`` commands: the name argument, waiting for a state.

``load``, ``unload``, ``sleep`` and ``wake`` change residency at once (the
scheduler's core decides and sends the engine commands) and then wait, up to
``--wait`` seconds, for the model to arrive: their ``execute`` returns a
coroutine, which the scheduler awaits in its own task, so the control socket
keeps answering other commands meanwhile.  ``infergridctl`` waits for the
answer as long as ``--wait`` asks (``reply_timeout``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import CommandError

POLL_S = 0.05
DEFAULT_WAIT_S = 300.0


def add_arguments(parser: Any) -> None:
    parser.add_argument("name", metavar="NAME", help="the model's name (models[].name)")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                        help=f"wait this long for the model to get there (default "
                             f"{DEFAULT_WAIT_S:g}; 0: return at once)")


def to_args(ns: Any) -> dict[str, Any]:
    return {"name": ns.name, "wait": ns.wait}


def reply_timeout(ns: Any) -> float:
    """How long infergridctl waits for the answer: the command's own wait, plus margin."""
    return max(0.0, float(ns.wait)) + 5.0


def check(ctx: Any, args: dict[str, Any]) -> tuple[str, float]:
    name = str(args.get("name", ""))
    if ctx.cfg.model(name) is None:
        known = ", ".join(m.name for m in ctx.cfg.models) or "none configured"
        raise CommandError(f"no model {name!r} (configured: {known})")
    try:
        wait = float(args.get("wait", DEFAULT_WAIT_S))
    except (TypeError, ValueError):
        raise CommandError("--wait must be a number of seconds") from None
    return name, max(0.0, wait)


def info(ctx: Any, name: str) -> dict[str, Any]:
    m = next(m for m in ctx.core.model_infos() if m.name == name)
    return {"name": name, "state": m.state, "ready_engines": m.ready_engines,
            "memory_bytes": m.memory_bytes, "inflight": m.inflight, "reason": m.reason}


async def wait_for(ctx: Any, name: str, target: str, wait_s: float,
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


def render(r: dict[str, Any]) -> str:
    if not r.get("done"):
        return f"{r['name']}: {r['state']} ({r.get('reason') or 'in progress'})"
    extra = f", {r['drained']} request(s) drained" if r.get("drained") else ""
    return f"{r['name']}: {r['state']} after {r['waited_s']:.1f}s{extra}"
