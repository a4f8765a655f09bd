"""One engine's lifecycle: the ``EngineRunner`` that owns it, its loop and its commands.

Each engine gets one ``EngineRunner`` with one task running ``run()``.  Every
step of that loop and every scheduler command runs under the runner's lock,
so a command never interleaves with a half-done poll or launch.  The runner
keeps an ``EngineStatus`` that is always current; the supervisor sends it as
it is after every poll round.

The runner is one class made of one part per concept, each in its own module
with the rules it keeps:

* ``launch.py`` (``Launcher``): launch the process, adopt one a previous
  supervisor left (from its state file), notice its exit, stop it;
* ``health.py`` (``HealthWatch``): readiness, polls, unhealthy, restart with backoff;
* ``sleepwake.py`` (``SleepWake``): the scheduler's residency commands:
  sleep, wake, drain, stop, start.

This module holds the state they share, what the engine holds for the ledger
(``held_bytes``), and the two ways in: ``run`` (the loop) and ``command``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import aiohttp

from .. import protocol as p
from ..config import Dirs, ModelConfig
from ..engines.base import EngineAdapter, EngineError
from ..logs import fields
from . import assist, procs, statefile
from .health import BACKOFF_START_S, HealthWatch
from .launch import Launcher, config_hash, kill_leftover_group
from .runas import RunAs
from .sleepwake import SleepWake
from .statefile import EngineRecord

log = logging.getLogger("infergrid.supervisor")

S = p.EngineState
POLL_S = 0.25
HOLDING = (S.STARTING, S.READY, S.UNHEALTHY, S.WAKING, S.DRAINING, S.STOPPING)


class EngineRunner(Launcher, HealthWatch, SleepWake):
    """One engine: its status, its process, and the loop and commands that change them."""

    def __init__(self, engine_id: str, model: ModelConfig, adapter: EngineAdapter, dirs: Dirs,
                 http: aiohttp.ClientSession, memory_bytes: int = 0,
                 sleep_bytes: int = 0, devices: tuple[int, ...] = ()) -> None:
        self.engine_id = engine_id
        self.model = model
        self.adapter = adapter
        adapter.work_dir = dirs.engines_dir  # ours, 0710: never a shared temporary directory
        #: the user the engine runs as (``runas.py``); None: ours.  Set by the Supervisor.
        self.run_as: RunAs | None = None
        self.dirs = dirs
        self.http = http
        self.memory_bytes = memory_bytes  # GPU bytes it holds awake (ledger.py)
        self.sleep_bytes = sleep_bytes  # ... and asleep
        self.devices = devices  # the GPUs it runs on, each holding those bytes (placement)
        self.reserved = False  # a start or wake admitted by the ledger is running
        self.resume = ""  # a sleep or wake the previous supervisor left half done
        # an engine placed on other GPUs than it runs on (the placement changed with the
        # config or the machine) is replaced, not adopted: the ledgers would be wrong
        self.config_hash = config_hash(model) + (
            "" if devices in ((), (0,)) else "@" + ",".join(map(str, devices)))
        self.lock = asyncio.Lock()
        self.status = p.EngineStatus(
            engine_id=engine_id, model=model.name, kind=adapter.kind, state=S.STOPPED,
            max_num_seqs=adapter.max_num_seqs(), supports_priority=adapter.supports_priority,
            priority_sign=adapter.priority_sign, supports_sleep=adapter.supports_sleep,
            devices=list(devices),
        )
        # a preloaded engine the scheduler stopped stays stopped across supervisor restarts,
        # and one the operator unloaded says so (a restarted scheduler learns it from here)
        intent = statefile.stopped_intent(dirs.engines_dir, engine_id)
        self.want_running = model.preload and not intent
        self.status.unloaded = intent == statefile.UNLOADED
        self.rec: EngineRecord | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.backoff_s = BACKOFF_START_S
        self.next_start = 0.0
        self.ready_deadline = 0.0
        self.ready_since = 0.0
        self.unhealthy_since = 0.0
        self.poll_failures = 0
        self.launches = 0
        self.fatal = False  # a config error: retrying cannot help
        if not adapter.managed:
            self.status.endpoint = adapter.endpoint(0)
            self.status.api_key = model.api_key

    # ------------------------------------------------------------------ state
    @property
    def log_file(self):  # noqa: ANN201 - Path
        return statefile.log_path(self.dirs.engines_dir, self.engine_id)

    @property
    def assist_path(self) -> Path:
        """Where the engine writes its step policy's stats (supervisor/assist.py): in its
        own directory when it runs as its own user (it could write nowhere else)."""
        where = self.engine_dir if self.run_as is not None else self.dirs.engines_dir
        return assist.stats_path(where, self.engine_id)

    @property
    def engine_dir(self) -> Path:
        """The engine's own directory when it runs as the engine user (ours, its group's,
        0771: ``procs.prepare_listen``): its socket and stats file are there."""
        return self.dirs.engines_dir / f"{self.engine_id}.d"

    @property
    def socket_path(self) -> Path:
        """Where the engine listens if its kind can (``EngineAdapter.listen_socket``)."""
        where = self.engine_dir if self.run_as is not None else self.dirs.engines_dir
        return where / f"{self.engine_id}.sock"

    def _fields(self) -> dict:
        return fields(engine=self.engine_id, model=self.model.name)

    def held_bytes(self) -> int:
        """GPU bytes this engine holds or has been promised, per the ledger (ledger.py)."""
        if not self.adapter.managed:
            return 0
        st = self.status.state
        if self.reserved or st in HOLDING or (
                st in (S.STOPPED, S.FAILED) and self.want_running and not self.fatal):
            return self.memory_bytes
        if st in (S.SLEEPING1, S.SLEEPING2):
            return self.sleep_bytes
        return 0

    def _set_state(self, state: str) -> None:
        if state != self.status.state:
            log.debug("engine %s: %s -> %s", self.engine_id, self.status.state, state,
                      extra=self._fields())
        self.status.state = state
        self.status.memory_bytes = self.held_bytes()
        if state in (S.STOPPED, S.FAILED):
            self.status.num_running = self.status.num_waiting = 0
            self.status.kv_usage = 0.0

    def _fail(self, why: str, with_log: bool = True) -> None:
        tail = procs.tail(self.log_file) if with_log and self.adapter.managed else ""
        self.status.last_error = why + (f"; last log lines:\n{tail}" if tail else "")
        log.error("engine %s %s%s", self.engine_id, why,
                  f"; last log lines:\n{tail}" if tail else "", extra=self._fields())
        self._set_state(S.FAILED)

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        """The engine's task: one ``step`` per ``POLL_S``, under the lock; never ends by itself."""
        while True:
            async with self.lock:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one bad step must not end the engine's care
                    log.exception("engine %s: step failed", self.engine_id)
            await asyncio.sleep(POLL_S)

    async def step(self) -> None:
        """One round: finish a half-done transition, (re)launch when due, notice an exit,
        then check readiness or poll."""
        if self.resume:
            await self._resume_transition()
            return
        if not self.want_running or self.fatal:
            return
        now = time.monotonic()
        if self.adapter.managed:
            if self.rec is None:
                if now >= self.next_start:
                    self._launch()
                return
            gone, rc = self._check_exit()
            if gone:
                self._on_exit(rc)
                return
        elif self.status.state == S.STOPPED or (
                self.status.state == S.FAILED and now >= self.next_start):
            self._set_state(S.STARTING)
            self.ready_deadline = now + self.model.startup_timeout_s
        state = self.status.state
        if state == S.STARTING:
            await self._check_ready(now)
        elif state in (S.READY, S.UNHEALTHY, S.SLEEPING1, S.SLEEPING2, S.DRAINING):
            await self._poll(now)

    # ------------------------------------------------------------------ commands
    async def command(self, cmd: p.EngineCommand) -> p.EngineCommandResult:
        """Carry out a scheduler's command under the lock; a failure is the answer, not raised."""
        t0 = time.monotonic()
        try:
            async with self.lock:
                await self._do(cmd)
            ok, err = True, ""
        except (EngineError, ValueError) as exc:
            ok, err = False, str(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the scheduler, not fatal
            log.exception("engine %s: %s failed", self.engine_id, cmd.action)
            ok, err = False, f"{type(exc).__name__}: {exc}"
        log.info("engine %s: %s %s%s", self.engine_id, cmd.action, "done" if ok else "failed",
                 f": {err}" if err else "", extra=self._fields())
        return p.EngineCommandResult(command_id=cmd.command_id, engine_id=self.engine_id,
                                     ok=ok, error=err, elapsed_s=time.monotonic() - t0)

    async def _do(self, cmd: p.EngineCommand) -> None:
        """Route a command to its part (``sleepwake.py``)."""
        st = self.status
        if cmd.action == "stop":
            if st.state in (S.READY, S.UNHEALTHY):
                await self._wait_engine_idle("stop")
            await self.stop(unload=cmd.unload)
        elif cmd.action == "start":
            if st.state in (S.SLEEPING1, S.SLEEPING2):
                await self._wake()
            else:
                self._want_start()
        elif cmd.action == "restart":
            await self.stop(remember=False)
            self._want_start()
        elif cmd.action == "sleep":
            await self._sleep(cmd.level)
        elif cmd.action == "wake":
            await self._wake()
        else:  # pragma: no cover - the protocol's Literal forbids it
            raise ValueError(f"unknown action {cmd.action!r}")


__all__ = ["POLL_S", "EngineRunner", "config_hash", "kill_leftover_group"]
