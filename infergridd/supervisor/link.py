"""The supervisor's link to the scheduler (docs/internals.md, "Link protocol").

The handshake, heartbeats and reconnecting are the shared peer link's
(``transport.peerlink``): it says Hello with the engine list whenever a
scheduler does not know this supervisor.  This module adds the supervisor's
part: the engine states in the Hello and in ``EngineUpdate``, and the
scheduler's ``EngineCommand``s, each run in its own task so a slow wake never
delays a heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import zmq.asyncio

from .. import protocol as p
from ..transport.peerlink import PeerLink


class SupervisorLink(PeerLink):
    ROLE = "supervisor"
    IDENTITY_PREFIX = "sv-"
    REFUSED_RETRY_S = 5.0  # a refusal means mismatched versions: an operator must act
    log = logging.getLogger("infergrid.supervisor")

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        path: Path,
        instance: str,
        engines: Callable[[], list[p.EngineStatus]],
        on_command: Callable[[p.EngineCommand], Awaitable[p.EngineCommandResult]],
    ) -> None:
        super().__init__(ctx, path, instance)
        self.engines = engines
        self.on_command = on_command
        self._cmd_tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        for t in self._cmd_tasks:
            t.cancel()
        super().close()

    # ------------------------------------------------------------------ the peer link's hooks
    def _fill_hello(self, hello: p.Hello) -> None:
        hello.engines = self.engines()

    def _digest(self) -> dict[str, int]:
        return {"engines": len(self.engines())}

    def _on_role_message(self, msg: p.Message) -> bool:
        if not isinstance(msg, p.EngineCommand):
            return False
        task = asyncio.create_task(self._run_command(msg), name=f"cmd-{msg.command_id}")
        self._cmd_tasks.add(task)
        task.add_done_callback(self._cmd_tasks.discard)
        return True

    async def _run_command(self, cmd: p.EngineCommand) -> None:
        result = await self.on_command(cmd)
        self.send(result)

    # ------------------------------------------------------------------ engine states
    def send_update(self, gpu_total_bytes: int = 0, gpu_free_bytes: int | None = None,
                    gpus: list[p.GpuDevice] | None = None) -> None:
        """The full engine list and the ledger's GPU figures; only once welcomed (before
        that the Hello carries the engines).  ``gpu_free_bytes`` None: the total less
        what the engines report holding."""
        if not self.welcomed:
            return
        engines = self.engines()
        if gpu_free_bytes is None:
            gpu_free_bytes = max(0, gpu_total_bytes - sum(e.memory_bytes for e in engines))
        self.send(p.EngineUpdate(instance=self.instance, engines=engines,
                                 gpu_total_bytes=gpu_total_bytes,
                                 gpu_free_bytes=gpu_free_bytes if gpu_total_bytes else 0,
                                 gpus=gpus or []))
