"""Launch an engine process, adopt one a previous supervisor left, stop one.

Part of ``EngineRunner`` (``engine.py``), which holds the state used here.
Rules this part keeps (each is a failure seen elsewhere):

* never signal a process we cannot prove is ours (pid *and* start time, and for a pid
  read from a record its command line and owner: ``identity.py``);
* the engine's key is in its environment or a 0600 file, never its command line, and
  it listens on a Unix socket in the runtime dir where its kind can (DESIGN §10);
* adopt only while this process holds the runtime dir's supervisor lock (``runlock.py``):
  a second instance on the same directory must never take the first one's engines;
* nothing awaits between ``Popen`` and writing the state file, so a
  supervisor cancelled or killed mid-launch cannot leave an engine without a record;
* an engine built from another config, or of another kind, is replaced, not adopted;
* worker processes that outlive their API server are killed with its group.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import msgspec

from .. import protocol as p
from ..config import Dirs, ModelConfig
from ..engines.base import (
    AdapterConfigError,
    EngineAdapter,
    astop_process_group,
    is_alive,
    proc_start_time,
)
from ..runlock import holder
from . import assist, identity, procs, runas, statefile
from .devices import place_env
from .statefile import EngineRecord

log = logging.getLogger("infergrid.supervisor")

S = p.EngineState
STOP_TIMEOUT_S = 30.0
ADOPT_READY_TRIES = 3


def config_hash(model: ModelConfig) -> str:
    """Fingerprint of what an engine was launched from; a changed config replaces it
    at the next supervisor start instead of silently keeping the old settings."""
    return hashlib.sha256(msgspec.json.encode(model)).hexdigest()[:16]


def exit_text(rc: int | None) -> str:
    """How a process ended, for ``last_error`` and the log."""
    if rc is None:
        return "exited (status unknown: not our child)"
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def kill_leftover_group(pid: int) -> None:
    """SIGKILL what is left of a process group whose leader has died.

    vLLM and SGLang run worker processes that can outlive their API server and
    keep GPU memory.  Safe: while its leader (pid == pgid) is a zombie or gone,
    Linux does not hand that pid to a new process as long as the group has
    members, so the group can only be ours — if the pid came from us, which a
    record in the runtime dir does not prove: so only a group whose every member
    is ours or the engine user's is killed (``identity.group_is_ours``).
    """
    if proc_start_time(pid) is not None:  # the pid is a live process again: not ours
        return
    if not identity.group_is_ours(pid):
        log.warning("not killing process group %d: it has members that are not ours", pid)
        return
    try:  # an engine of its own user: with its uid (runas.as_engine)
        runas.as_engine(lambda: os.killpg(pid, signal.SIGKILL) or True)
    except (ProcessLookupError, PermissionError):
        pass


class Launcher:
    """The process part of ``EngineRunner``: launch, adopt, check for exit, stop.

    Uses ``_set_state``, ``_fail`` and ``_fields`` (``engine.py``) and
    ``_schedule_restart`` (``health.py``)."""

    # EngineRunner's state this part reads and writes (set in engine.py)
    engine_id: str
    model: ModelConfig
    adapter: EngineAdapter
    dirs: Dirs
    http: aiohttp.ClientSession
    config_hash: str
    devices: tuple[int, ...]
    status: p.EngineStatus
    assist_path: Path
    socket_path: Path
    run_as: runas.RunAs | None
    rec: EngineRecord | None
    proc: subprocess.Popen[bytes] | None
    resume: str
    want_running: bool
    fatal: bool
    launches: int
    poll_failures: int
    ready_deadline: float
    ready_since: float
    unhealthy_since: float

    # ------------------------------------------------------------------ adoption
    async def adopt(self) -> None:
        """Take over an engine the previous supervisor left running, if it provably is
        ours and still built from the same config; otherwise clean up after it."""
        rec = statefile.load(self.dirs.engines_dir, self.engine_id)
        if rec is None:
            return
        if holder(self.dirs.supervisor_lock) != os.getpid():  # Supervisor.run takes it first
            raise RuntimeError(f"engine {self.engine_id} not adopted: this process does not "
                               f"hold {self.dirs.supervisor_lock}")
        self.status.generation = rec.generation
        if is_alive(rec.pid, rec.start_time) and (why := identity.why_not_ours(rec)):
            # DESIGN §10: a pid from a file is never trusted; this one is not signalled
            log.warning("engine record %s names a process that is not our engine (%s): "
                        "ignoring it, starting afresh", self.engine_id, why,
                        extra=self._fields())
            statefile.remove(self.dirs.engines_dir, self.engine_id)
            return
        if not self.adapter.managed or rec.kind != self.adapter.kind:
            await self._discard(rec, "its engine kind changed")
            return
        if not is_alive(rec.pid, rec.start_time):
            log.info("engine %s (pid %d) from a previous supervisor is gone; starting afresh",
                     self.engine_id, rec.pid, extra=self._fields())
            kill_leftover_group(rec.pid)
            statefile.remove(self.dirs.engines_dir, self.engine_id)
            return
        if rec.config_hash != self.config_hash:
            await self._discard(rec, "its model configuration changed")
            return
        # a record from before engines had sockets: they all listened on loopback
        endpoint = rec.endpoint or f"http://127.0.0.1:{rec.port}"
        state = S.UNHEALTHY
        sleeping = await self.adapter.is_sleeping(self.http, endpoint, rec.api_key)
        if sleeping is None:
            sleeping = self.adapter.supports_sleep and rec.sleep_level > 0
        if rec.transition:
            # the previous supervisor died mid sleep or wake: finish it in the first step
            # (the scheduler asked for it), counting the memory as held until then
            self.resume = rec.transition
            state = S.WAKING if rec.transition == "wake" else S.DRAINING
        elif sleeping:
            state = S.SLEEPING2 if rec.sleep_level == 2 else S.SLEEPING1
        else:
            for _ in range(ADOPT_READY_TRIES):
                if await self.adapter.ready(self.http, endpoint, rec.api_key):
                    state = S.READY
                    break
                await asyncio.sleep(0.2)
            else:
                left = rec.started_at + self.model.startup_timeout_s - time.time()
                if left > 0:
                    state = S.STARTING
                    self.ready_deadline = time.monotonic() + left
        self.rec = rec
        self.want_running = True
        self.status.pid = rec.pid
        self.status.endpoint = endpoint
        self.status.api_key = rec.api_key
        self.status.started_at = rec.started_at
        self._set_state(state)
        now = time.monotonic()
        if state == S.READY:
            self.ready_since = now
        elif state == S.UNHEALTHY:
            self.unhealthy_since = now
        log.info("adopted engine %s (pid %d, %s, generation %d) as %s%s", self.engine_id,
                 rec.pid, endpoint, rec.generation, state,
                 f" (finishing its {rec.transition})" if rec.transition else "",
                 extra=self._fields())

    async def _discard(self, rec: EngineRecord, why: str) -> None:
        if identity.is_our_engine(rec):
            log.warning("replacing engine %s (pid %d): %s", self.engine_id, rec.pid, why,
                        extra=self._fields())
            await astop_process_group(rec.pid, rec.start_time, STOP_TIMEOUT_S)
        statefile.remove(self.dirs.engines_dir, self.engine_id)

    # ------------------------------------------------------------------ the process
    def _launch(self) -> None:
        """Start the engine process; synchronous on purpose (see the module docstring)."""
        port = procs.free_port()
        api_key = procs.new_api_key()
        generation = self.status.generation + 1
        # one adapter serves every replica: this launch's socket, set with no await until
        # launch_spec, endpoint and listen_socket have read it
        self.adapter.socket_path = self.socket_path
        try:
            spec = self.adapter.launch_spec(port, api_key)
        except AdapterConfigError as exc:
            self.fatal = True
            self._fail(f"cannot be launched: {exc}", with_log=False)
            return
        assist.prepare_launch(spec, self.status, self.assist_path)
        endpoint = self.adapter.endpoint(port)
        place_env(self.devices, spec.env)  # exactly its GPUs (supervisor/devices.py)
        self.launches += 1
        self.status.generation = generation
        self.status.restarts = max(0, generation - 1)  # counts across supervisors
        try:
            procs.prepare_listen(self.adapter.listen_socket(), self.run_as)
            proc = procs.launch(spec, self.log_file, self.run_as)
        except OSError as exc:
            self._fail(f"could not start {spec.argv[0]!r}: {exc}", with_log=False)
            self._schedule_restart()
            return
        started_at = time.time()
        rec = EngineRecord(
            engine_id=self.engine_id, model=self.model.name, kind=self.adapter.kind,
            pid=proc.pid, start_time=procs.start_time_of(proc.pid), port=port, api_key=api_key,
            generation=generation, argv=spec.argv, started_at=started_at,
            config_hash=self.config_hash, endpoint=endpoint,
        )
        self.proc, self.rec = proc, rec
        try:
            statefile.save(self.dirs.engines_dir, rec)
        except OSError as exc:  # unrecorded, it could never be re-adopted or stopped later
            proc.kill()
            proc.wait()
            self._forget_process()
            self._fail(f"not started: cannot write its state file: {exc}", with_log=False)
            self._schedule_restart()
            return
        self.status.pid = proc.pid
        self.status.endpoint = endpoint
        self.status.api_key = api_key
        self.status.started_at = started_at
        self.ready_deadline = time.monotonic() + self.model.startup_timeout_s
        self.poll_failures = 0
        self._set_state(S.STARTING)
        log.info("started engine %s (pid %d, %s, generation %d): %s", self.engine_id,
                 proc.pid, endpoint, generation, " ".join(spec.argv).replace(api_key, "***"),
                 extra=self._fields())

    def _check_exit(self) -> tuple[bool, int | None]:
        """(gone, exit status).  Our own child is inspected *before* it is reaped, so its
        pid cannot be reused while we clean up its process group."""
        assert self.rec is not None
        if self.proc is not None:
            if self.proc.returncode is None:
                try:
                    info = os.waitid(os.P_PID, self.proc.pid,
                                     os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:  # already reaped elsewhere
                    info = True
                if info is None:
                    return False, None
                kill_leftover_group(self.proc.pid)
                self.proc.wait()
            return True, self.proc.returncode
        if is_alive(self.rec.pid, self.rec.start_time):
            return False, None
        kill_leftover_group(self.rec.pid)
        return True, None

    async def _stop_process(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop our engine process (if any) and forget it; safe when it is already gone."""
        rec = self.rec
        if rec is not None and self.adapter.managed:
            await astop_process_group(rec.pid, rec.start_time, timeout_s)
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            kill_leftover_group(rec.pid)
        if self.adapter.managed:
            self._forget_process()

    def _forget_process(self) -> None:
        self.rec = None
        self.proc = None
        self.status.pid = 0
        statefile.remove(self.dirs.engines_dir, self.engine_id)
