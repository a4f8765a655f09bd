"""An engine's health: readiness after a start, polls, unhealthy, restart with backoff.

Part of ``EngineRunner`` (``engine.py``), which holds the state used here.
Rules this part keeps (each is a failure seen elsewhere):

* never spin: every failed start or crash waits an exponential backoff
  (1 s doubling to 30 s), reset only after the engine stayed ready 30 s;
* every failure says why: exit status or timeout plus the engine log's last lines;
* an engine alive but unanswering is marked unhealthy after a few polls and
  replaced only after ``UNHEALTHY_RESTART_S``, never for one slow answer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp

from .. import protocol as p
from ..config import ModelConfig
from ..engines.base import EngineAdapter, EngineError
from . import assist
from .launch import exit_text

log = logging.getLogger("infergrid.supervisor")

S = p.EngineState
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # ready this long: the next crash starts the backoff afresh
UNHEALTHY_AFTER = 4  # consecutive failed polls
UNHEALTHY_RESTART_S = 120.0  # alive but unanswering this long: replace it


class HealthWatch:
    """The health part of ``EngineRunner``.

    Uses ``_set_state``, ``_fail`` and ``_fields`` (``engine.py``), ``_stop_process`` and
    ``_forget_process`` (``launch.py``) and ``_check_still_asleep`` (``sleepwake.py``)."""

    # EngineRunner's state this part reads and writes (set in engine.py)
    engine_id: str
    model: ModelConfig
    adapter: EngineAdapter
    http: aiohttp.ClientSession
    status: p.EngineStatus
    assist_path: Path
    backoff_s: float
    next_start: float
    ready_deadline: float
    ready_since: float
    unhealthy_since: float
    poll_failures: int

    def _schedule_restart(self) -> None:
        """The next start waits out the backoff, which doubles (up to ``BACKOFF_MAX_S``)."""
        self.next_start = time.monotonic() + self.backoff_s
        log.info("engine %s: next start in %.0fs", self.engine_id, self.backoff_s,
                 extra=self._fields())
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def _on_exit(self, rc: int | None) -> None:
        """The process is gone: say how, forget it, and start it again after the backoff."""
        self._fail(exit_text(rc))
        self._forget_process()
        self._schedule_restart()

    async def _check_ready(self, now: float) -> None:
        """A starting engine: ready now, or failed once ``startup_timeout_s`` has passed."""
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
        """Read the engine's metrics into its status; failed polls make it unhealthy, and an
        engine unhealthy for ``UNHEALTHY_RESTART_S`` is replaced."""
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
        assist.refresh(st, self.assist_path)
        st.updated_at = time.time()
        self.poll_failures = 0
        if st.state == S.UNHEALTHY:
            log.info("engine %s answers again", self.engine_id, extra=self._fields())
            st.last_error = ""
            self._set_state(S.READY)
            self.ready_since = now
        if st.state == S.READY and now - self.ready_since > STABLE_AFTER_S:
            self.backoff_s = BACKOFF_START_S
