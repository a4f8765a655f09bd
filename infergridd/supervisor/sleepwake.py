"""The scheduler's residency commands at one engine: sleep, wake, drain, stop, start.

Part of ``EngineRunner`` (``engine.py``), which holds the state used here and
runs these under its lock.  Rules this part keeps:

* a sleep or stop waits (bounded) for the engine's own counters to show it
  idle: the scheduler's books are the first line against killing a request,
  this is the second (``_wait_engine_idle``);
* a sleep or wake is written to the state file before the engine is asked and
  cleared after, so a supervisor killed in between finishes it on adoption
  (``_resume_transition``) and the ledger never counts a half-done one wrong;
* a stop the scheduler or operator asked for is remembered across supervisor
  restarts (``statefile.save_stopped``); one because the appliance stops is not.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from .. import protocol as p
from ..config import Dirs
from ..engines.base import EngineAdapter, EngineError
from . import statefile
from .health import BACKOFF_START_S
from .statefile import EngineRecord

log = logging.getLogger("infergrid.supervisor")

S = p.EngineState
#: Before a commanded sleep or stop, wait at most this long for the engine's own
#: counters to show nothing running or waiting (see ``_wait_engine_idle``).
DRAIN_CHECK_S = 10.0
DRAIN_POLL_S = 0.1


class SleepWake:
    """The residency part of ``EngineRunner``.

    Uses ``_set_state`` and ``_fields`` (``engine.py``) and ``_stop_process``
    (``launch.py``)."""

    # EngineRunner's state this part reads and writes (set in engine.py)
    engine_id: str
    adapter: EngineAdapter
    dirs: Dirs
    http: aiohttp.ClientSession
    status: p.EngineStatus
    rec: EngineRecord | None
    resume: str
    want_running: bool
    fatal: bool
    backoff_s: float
    next_start: float
    ready_since: float
    unhealthy_since: float

    # ------------------------------------------------------------------ start and stop
    def _want_start(self) -> None:
        """Started from now on (and across supervisor restarts); at once if not running."""
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

    # ------------------------------------------------------------------ sleep
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

    # ------------------------------------------------------------------ wake
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

    # ------------------------------------------------------------------ the record of a transition
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
