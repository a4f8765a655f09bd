"""The control socket's request → reply: decode, check the protocol, find the command,
run it, and turn what it raised into an exit status for ``infergridctl``.

Kept apart from the daemon's sockets so that the daemon only moves bytes: it
hands each request's bytes here and sends back what it gets (at once, or
later for a command that waits).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import protocol as p
from .commands import CommandContext, CommandError, lookup

log = logging.getLogger("infergrid.scheduler")

#: exit status of a command refused for who sent it (as for an unreachable appliance)
EXIT_DENIED = 1


class ControlHandler:
    """Runs control commands in ``ctx``; ``after_write`` runs after every command that
    changed something (the daemon pushes keys and settings to the front doors then,
    before it answers)."""

    def __init__(self, ctx: CommandContext, after_write: Callable[[], None]) -> None:
        self.ctx = ctx
        self.after_write = after_write

    def handle(self, data: bytes, writable: bool = True, admitted: bool = True,
               ) -> p.ControlReply | Awaitable[p.ControlReply]:
        """A ``ControlReply``, or an awaitable of one for a command that waits.

        ``writable``: the request came in on the admin socket (``control.sock``), so a
        command that changes something may run; on ``control-ro.sock`` only read-only
        ones do.  ``admitted``: the sender's credentials are ones the socket is meant
        for (``transport/access.py``); a stranger gets nothing, not even a read.
        """
        if not admitted:
            return _failed("permission denied: this control socket is for root and the "
                           "infergrid groups only", EXIT_DENIED)
        try:
            msg = p.decode(data)
        except p.ProtocolError as exc:
            return _failed(f"bad request: {exc}", 2)
        if not isinstance(msg, p.ControlRequest):
            return _failed("expected a control request", 2)
        if p.protocol_major(msg.protocol_version) != p.protocol_major(p.PROTOCOL_VERSION):
            return _failed(f"infergridctl speaks protocol {msg.protocol_version}, "
                           f"the scheduler {p.PROTOCOL_VERSION}", 1)
        cls = lookup(msg.command)
        if cls is None:
            return _failed(f"unknown command {msg.command!r}", 2)
        if not writable and not cls.read_only:
            log.warning("control: refused %s on the read-only socket", msg.command)
            return _failed(f"permission denied: `{msg.command.replace('.', ' ')}` changes the "
                           "appliance; it needs the admin socket (root or a member of "
                           "infergrid-admin)", EXIT_DENIED)
        try:
            result = cls(msg.args).execute(self.ctx)
        except CommandError as exc:
            return _failed(str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - one bad command must not stop the scheduler
            log.exception("control command %s failed", msg.command)
            return _failed(f"internal error: {exc}", 1)
        log.log(logging.DEBUG if cls.read_only else logging.INFO, "control: %s %s",
                msg.command, _loggable(msg.args))
        if not cls.read_only:
            self.after_write()
        if inspect.isawaitable(result):
            return _await_result(msg.command, result)
        return p.ControlReply(ok=True, result=result)


async def _await_result(name: str, pending: Awaitable[Any]) -> p.ControlReply:
    """The reply of a command whose ``execute`` returned an awaitable."""
    try:
        result = await pending
    except CommandError as exc:
        return _failed(str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001
        log.exception("control command %s failed", name)
        return _failed(f"internal error: {exc}", 1)
    return p.ControlReply(ok=True, result=result)


def _failed(error: str, exit_code: int) -> p.ControlReply:
    return p.ControlReply(ok=False, error=error, exit_code=exit_code)


def _loggable(args: dict[str, Any]) -> dict[str, Any]:
    """Arguments fit for the journal: nothing named like a key."""
    return {k: v for k, v in args.items() if "key" not in k}
