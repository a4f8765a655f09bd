"""One engine's lifecycle: adopt or launch, wait for ready, poll, restart, sleep/wake/stop.

Each engine gets one ``EngineRunner`` with one task running ``run()``.  Every
step of that loop and every scheduler command runs under the runner's lock,
so a command never interleaves with a half-done poll or launch.  The runner
keeps an ``EngineStatus`` that is always current; the supervisor sends it as
it is after every poll round.

Rules this module keeps (each is a failure seen elsewhere):

* never spin: every failed start or crash waits an exponential backoff
  (1 s doubling to 30 s), reset only after the engine stayed ready 30 s;
* every failure says why: exit status or timeout plus the engine log's last lines;
* never signal a process we cannot prove is ours (pid *and* start time);
* nothing awaits between ``Popen`` and writing the state file, so a
  supervisor cancelled or killed mid-launch cannot leave an engine without a record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import time

import aiohttp
import msgspec

from .. import protocol as p
from ..config import Dirs, ModelConfig
from ..engines.base import (
    AdapterConfigError,
    EngineAdapter,
    EngineError,
    astop_process_group,
    is_alive,
    proc_start_time,
)
from ..logs import fields
from . import procs, statefile
from .statefile import EngineRecord

log = logging.getLogger("infergrid.supervisor")

S = p.EngineState
POLL_S = 0.25
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # ready this long: the next crash starts the backoff afresh
UNHEALTHY_AFTER = 4  # consecutive failed polls
UNHEALTHY_RESTART_S = 120.0  # alive but unanswering this long: replace it
STOP_TIMEOUT_S = 30.0
#: Before a commanded sleep or stop, wait at most this long for the engine's own
#: counters to show nothing running or waiting (see ``_wait_engine_idle``).
DRAIN_CHECK_S = 10.0
DRAIN_POLL_S = 0.1
ADOPT_READY_TRIES = 3
HOLDING = (S.STARTING, S.READY, S.UNHEALTHY, S.WAKING, S.DRAINING, S.STOPPING)


def config_hash(model: ModelConfig) -> str:
    """Fingerprint of what an engine was launched from; a changed config replaces it
    at the next supervisor start instead of silently keeping the old settings."""
    return hashlib.sha256(msgspec.json.encode(model)).hexdigest()[:16]


def _exit_text(rc: int | None) -> str:
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
    members, so the group can only be ours.
    """
    if proc_start_time(pid) is not None:  # the pid is a live process again: not ours
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class EngineRunner:
    def __init__(self, engine_id: str, model: ModelConfig, adapter: EngineAdapter, dirs: Dirs,
                 http: aiohttp.ClientSession, memory_bytes: int = 0,
                 sleep_bytes: int = 0) -> None:
        self.engine_id = engine_id
        self.model = model
        self.adapter = adapter
        self.dirs = dirs
        self.http = http
        self.memory_bytes = memory_bytes  # GPU bytes it holds awake (ledger.py)
        self.sleep_bytes = sleep_bytes  # ... and asleep
        self.reserved = False  # a start or wake admitted by the ledger is running
        self.resume = ""  # a sleep or wake the previous supervisor left half done
        self.config_hash = config_hash(model)
        self.lock = asyncio.Lock()
        self.status = p.EngineStatus(
            engine_id=engine_id, model=model.name, kind=adapter.kind, state=S.STOPPED,
            max_num_seqs=adapter.max_num_seqs(), supports_priority=adapter.supports_priority,
            priority_sign=adapter.priority_sign, supports_sleep=adapter.supports_sleep,
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

    # ------------------------------------------------------------------ helpers
    @property
    def log_file(self):  # noqa: ANN201 - Path
        return statefile.log_path(self.dirs.engines_dir, self.engine_id)

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

    def _schedule_restart(self) -> None:
        self.next_start = time.monotonic() + self.backoff_s
        log.info("engine %s: next start in %.0fs", self.engine_id, self.backoff_s,
                 extra=self._fields())
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def _forget_process(self) -> None:
        self.rec = None
        self.proc = None
        self.status.pid = 0
        statefile.remove(self.dirs.engines_dir, self.engine_id)

    def _fail(self, why: str, with_log: bool = True) -> None:
        tail = procs.tail(self.log_file) if with_log and self.adapter.managed else ""
        self.status.last_error = why + (f"; last log lines:\n{tail}" if tail else "")
        log.error("engine %s %s%s", self.engine_id, why,
                  f"; last log lines:\n{tail}" if tail else "", extra=self._fields())
        self._set_state(S.FAILED)

    # ------------------------------------------------------------------ adoption
    async def adopt(self) -> None:
        """Take over an engine the previous supervisor left running, if it provably is
        ours and still built from the same config; otherwise clean up after it."""
        rec = statefile.load(self.dirs.engines_dir, self.engine_id)
        if rec is None:
            return
        self.status.generation = rec.generation
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
        endpoint = self.adapter.endpoint(rec.port)
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
        log.info("adopted engine %s (pid %d, port %d, generation %d) as %s%s", self.engine_id,
                 rec.pid, rec.port, rec.generation, state,
                 f" (finishing its {rec.transition})" if rec.transition else "",
                 extra=self._fields())

    async def _discard(self, rec: EngineRecord, why: str) -> None:
        if is_alive(rec.pid, rec.start_time):
            log.warning("replacing engine %s (pid %d): %s", self.engine_id, rec.pid, why,
                        extra=self._fields())
            await astop_process_group(rec.pid, rec.start_time, STOP_TIMEOUT_S)
        statefile.remove(self.dirs.engines_dir, self.engine_id)

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
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

    def _launch(self) -> None:
        """Start the engine process; synchronous on purpose (see the module docstring)."""
        port = procs.free_port()
        api_key = procs.new_api_key()
        generation = self.status.generation + 1
        try:
            spec = self.adapter.launch_spec(port, api_key)
        except AdapterConfigError as exc:
            self.fatal = True
            self._fail(f"cannot be launched: {exc}", with_log=False)
            return
        self.launches += 1
        self.status.generation = generation
        self.status.restarts = max(0, generation - 1)  # counts across supervisors
        try:
            proc = procs.launch(spec, self.log_file)
        except OSError as exc:
            self._fail(f"could not start {spec.argv[0]!r}: {exc}", with_log=False)
            self._schedule_restart()
            return
        started_at = time.time()
        rec = EngineRecord(
            engine_id=self.engine_id, model=self.model.name, kind=self.adapter.kind,
            pid=proc.pid, start_time=procs.start_time_of(proc.pid), port=port, api_key=api_key,
            generation=generation, argv=spec.argv, started_at=started_at,
            config_hash=self.config_hash,
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
        self.status.endpoint = self.adapter.endpoint(port)
        self.status.api_key = api_key
        self.status.started_at = started_at
        self.ready_deadline = time.monotonic() + self.model.startup_timeout_s
        self.poll_failures = 0
        self._set_state(S.STARTING)
        log.info("started engine %s (pid %d, port %d, generation %d): %s", self.engine_id,
                 proc.pid, port, generation, " ".join(spec.argv).replace(api_key, "***"),
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

    def _on_exit(self, rc: int | None) -> None:
        self._fail(_exit_text(rc))
        self._forget_process()
        self._schedule_restart()

    async def _check_ready(self, now: float) -> None:
        st = self.status
        if await self.adapter.ready(self.http, st.endpoint, st.api_key):
            self._set_state(S.READY)
            self.ready_since = time.monotonic()
            st.last_error = ""
            log.info("engine %s is ready (generation %d, %.1fs after start)", self.engine_id,
                     st.generation, time.time() - st.started_at, extra=self._fields())
            await self._poll(time.monotonic())
            return
        if now > self.ready_deadline:
            self._fail(f"was not ready within {self.model.startup_timeout_s:g}s")
            await self._stop_process()
            self._schedule_restart()

    async def _poll(self, now: float) -> None:
        st = self.status
        try:
            m = await self.adapter.metrics(self.http, st.endpoint, st.api_key)
        except EngineError as exc:
            self.poll_failures += 1
            if self.poll_failures >= UNHEALTHY_AFTER and st.state == S.READY:
                st.last_error = f"{self.poll_failures} polls failed: {exc}"
                log.warning("engine %s is unhealthy: %s", self.engine_id, st.last_error,
                            extra=self._fields())
                self._set_state(S.UNHEALTHY)
                self.unhealthy_since = now
            if (st.state == S.UNHEALTHY and self.adapter.managed
                    and now - self.unhealthy_since > UNHEALTHY_RESTART_S):
                self._fail(f"did not answer for {UNHEALTHY_RESTART_S:g}s; restarting it")
                await self._stop_process()
                self.backoff_s = BACKOFF_START_S
                self.next_start = 0.0
            return
        if st.state in (S.SLEEPING1, S.SLEEPING2) and self.adapter.supports_sleep:
            await self._check_still_asleep(now)
        st.num_running, st.num_waiting = m.num_running, m.num_waiting
        st.kv_usage = m.kv_usage
        st.prompt_tokens_total = m.prompt_tokens_total
        st.generation_tokens_total = m.generation_tokens_total
        st.updated_at = time.time()
        self.poll_failures = 0
        if st.state == S.UNHEALTHY:
            log.info("engine %s answers again", self.engine_id, extra=self._fields())
            st.last_error = ""
            self._set_state(S.READY)
            self.ready_since = now
        if st.state == S.READY and now - self.ready_since > STABLE_AFTER_S:
            self.backoff_s = BACKOFF_START_S

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

    # ------------------------------------------------------------------ commands
    async def command(self, cmd: p.EngineCommand) -> p.EngineCommandResult:
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

    def _want_start(self) -> None:
        self.want_running = True
        self.fatal = False
        self.status.unloaded = False
        statefile.save_stopped(self.dirs.engines_dir, self.engine_id, False)
        if self.rec is None:
            self.backoff_s = BACKOFF_START_S
            self.next_start = 0.0

    async def stop(self, remember: bool = True, unload: bool = False) -> None:
        """Stop and keep stopped until a start command (SIGTERM, bounded wait, SIGKILL).

        ``remember``: also across supervisor restarts (a scheduler's eviction or
        unload); not when the whole appliance stops, so it starts afresh.
        ``unload``: an operator's unload, reported as ``EngineStatus.unloaded``."""
        self.want_running = False
        self.resume = ""
        if remember:
            self.status.unloaded = unload
            if self.adapter.managed:
                statefile.save_stopped(self.dirs.engines_dir, self.engine_id, True, unload)
        if self.adapter.managed and self.rec is not None:
            self._set_state(S.STOPPING)
            await self._stop_process()
        self.status.pid = 0 if self.adapter.managed else self.status.pid
        self._set_state(S.STOPPED)

    async def _sleep(self, level: int) -> None:
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, not {level}")
        if not self.adapter.supports_sleep:
            raise EngineError(f"{self.adapter.kind} engine {self.engine_id} cannot sleep")
        want = S.SLEEPING1 if level == 1 else S.SLEEPING2
        st = self.status
        if st.state == want:
            return
        if st.state == S.SLEEPING1:  # vLLM and SGLang ignore a sleep while asleep
            raise EngineError(f"engine {self.engine_id} is asleep at level 1 and cannot go "
                              "to level 2 without waking: wake it first, or stop it")
        if st.state not in (S.READY, S.UNHEALTHY, S.DRAINING):
            raise EngineError(f"engine {self.engine_id} is {st.state}, cannot sleep")
        before = st.state
        if before != S.DRAINING:  # DRAINING: resuming a sleep the engine already began
            await self._wait_engine_idle(f"sleep (level {level})")
        self._record_transition(f"sleep{level}")
        self._set_state(S.DRAINING)  # still holds its memory until the engine says done
        try:
            await self.adapter.sleep(self.http, st.endpoint, st.api_key, level)
        except EngineError:
            self._record_transition("")
            self._set_state(before)
            raise
        if self.rec is not None:
            self.rec.sleep_level = level
        self._record_transition("")
        self._set_state(want)

    async def _wait_engine_idle(self, what: str) -> None:
        """Wait (bounded) until the engine itself reports nothing running or waiting.

        The scheduler sends a sleep or stop only once its own books show the
        engine drained, and that is the rule that keeps a swap from killing a
        request.  This is the second line: a request the scheduler no longer
        counts may still be running (one from a front door it gave up on that is
        in fact still streaming; a front door's retry), and vLLM's sleep or a
        stop would kill it.  A gauge that never drops must not block residency
        for ever, so after ``DRAIN_CHECK_S`` it goes ahead, saying so; an engine
        whose metrics cannot be read is taken at the scheduler's word.
        """
        st = self.status
        if not self.adapter.managed or not st.endpoint:
            return
        t0 = time.monotonic()
        while True:
            try:
                m = await self.adapter.metrics(self.http, st.endpoint, st.api_key)
            except EngineError:
                return
            busy = m.num_running + m.num_waiting
            if busy <= 0:
                if time.monotonic() - t0 > DRAIN_POLL_S:
                    log.info("engine %s: drained after %.1fs, now the %s", self.engine_id,
                             time.monotonic() - t0, what, extra=self._fields())
                return
            if time.monotonic() - t0 >= DRAIN_CHECK_S:
                log.warning("engine %s still reports %d running and %d waiting after %.0fs "
                            "though the scheduler counts none in flight; going ahead with "
                            "the %s", self.engine_id, m.num_running, m.num_waiting,
                            DRAIN_CHECK_S, what, extra=self._fields())
                return
            await asyncio.sleep(DRAIN_POLL_S)

    def _record_transition(self, transition: str) -> None:
        """Written *before* a sleep or wake call and cleared after: see ``adopt``."""
        if self.rec is not None:
            self.rec.transition = transition
            statefile.save(self.dirs.engines_dir, self.rec)

    async def _resume_transition(self) -> None:
        """Finish the sleep or wake a killed supervisor left half done.  Both calls are
        idempotent at the engine (a wake of an awake engine returns at once), so this
        only waits for what is under way and then reports the engine's true state."""
        what, self.resume = self.resume, ""
        st = self.status
        try:
            if what == "wake":
                self._set_state(S.SLEEPING1)  # so _wake accepts it; it re-marks WAKING
                await self._wake()
            else:
                self._set_state(S.READY)
                await self._sleep(2 if what == "sleep2" else 1)
        except EngineError as exc:
            log.warning("engine %s: could not finish its %s (%s); asking it how it is",
                        self.engine_id, what, exc, extra=self._fields())
            self._record_transition("")
            sleeping = await self.adapter.is_sleeping(self.http, st.endpoint, st.api_key)
            level = self.rec.sleep_level if self.rec is not None else 1
            self._set_state((S.SLEEPING2 if level == 2 else S.SLEEPING1) if sleeping
                            else S.UNHEALTHY)
            self.unhealthy_since = time.monotonic()

    async def _check_still_asleep(self, now: float) -> None:
        """The engine says whether it sleeps: a wake we did not see (a supervisor killed
        mid-wake, an operator's curl) is corrected, so the ledger matches the engine."""
        st = self.status
        sleeping = await self.adapter.is_sleeping(self.http, st.endpoint, st.api_key)
        if sleeping is False:
            log.warning("engine %s reports it is awake though recorded %s; it holds its "
                        "memory again", self.engine_id, st.state, extra=self._fields())
            if self.rec is not None:
                self.rec.sleep_level = 0
            self._record_transition("")
            self._set_state(S.READY)
            self.ready_since = now

    async def _wake(self) -> None:
        st = self.status
        if st.state == S.READY:
            return
        if st.state not in (S.SLEEPING1, S.SLEEPING2):
            raise EngineError(f"engine {self.engine_id} is {st.state}, not sleeping")
        before = st.state
        self._record_transition("wake")
        self._set_state(S.WAKING)
        try:
            await self.adapter.wake(self.http, st.endpoint, st.api_key)
        except EngineError:
            self._record_transition("")
            self._set_state(before)
            raise
        try:
            await self.adapter.warmup(self.http, st.endpoint, st.api_key)
        except EngineError as exc:  # the polls decide its health from here
            log.warning("engine %s: warm-up after wake failed: %s", self.engine_id, exc,
                        extra=self._fields())
        if self.rec is not None:
            self.rec.sleep_level = 0
        self._record_transition("")
        self._set_state(S.READY)
        self.ready_since = time.monotonic()
