"""The simulated engine's state and its step loop: the asyncio side of ``EngineModel``.

One asyncio task runs the step loop (plan → wait the step's duration → commit)
and hands each step's tokens to the waiting responses through a small per-
request ``TokenSink`` (a token list plus at most one pending future).  So the
cost per step is one future per *stream that got tokens*, never a task per
token, and a response that fell behind writes all its pending tokens in one
write.  Sleep/wake transitions and the injected faults (crash, hang, error
rate) live here too: they change what the loop may do, not how HTTP looks.
The HTTP dialects that read this state are ``http_openai``, ``http_vllm`` and
``http_sglang``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
import time
from typing import Any

from infergridd.assist.stats import StatsWriter
from infergridd.sim import api
from infergridd.sim.metrics import SimMetrics
from infergridd.sim.model import EngineModel, SimRequest
from infergridd.sim.options import SimOptions
from infergridd.sim.profile import Profile

__all__ = ["SimEngine", "TokenSink"]

log = logging.getLogger("infergridd.sim")

#: Late steps may catch up by at most this much, so timer jitter does not slow
#: the simulated engine down, but a long stall (a blocked loop) does not
#: become a burst of instant steps either.
_MAX_CATCH_UP_S = 0.005


class TokenSink:
    """Where the step loop leaves one request's tokens for its HTTP response."""

    __slots__ = ("buf", "finish", "error", "waiter")

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.finish: str | None = None
        self.error: str | None = None
        self.waiter: asyncio.Future[None] | None = None

    def push(self, text: str, finish: str | None) -> None:
        self.buf.append(text)
        if finish is not None:
            self.finish = finish
        self._wake()

    def fail(self, message: str) -> None:
        self.error = message
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def wait(self) -> None:
        """Until there is something to send (tokens, the end, or an error)."""
        if self.buf or self.finish is not None or self.error is not None:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter


class SimEngine:
    """The engine's state: the model, the step loop, readiness, sleep and faults."""

    def __init__(self, options: SimOptions, profile: Profile | None = None) -> None:
        self.options = options
        self.profile = profile or options.resolve_profile()
        sglang = options.batching == "sglang"
        self.model = EngineModel(self.profile, clock=time.monotonic, seed=options.seed,
                                 policy=options.engine_policy,
                                 priority_sign=options.priority_sign, assist=options.assist,
                                 batching=options.batching,
                                 sglang=options.sglang_settings() if sglang else None)
        self.assist_stats = None if options.assist is None else StatsWriter.from_env(
            "sim", "infergridd.sim.model.EngineModel", "sim", options.assist,
            self.profile.max_num_batched_tokens, self.profile.max_num_seqs)
        if self.assist_stats is not None:
            self.assist_stats.counters = self.model.assist_counters
            self.assist_stats.maybe_write(force=True)
        self.rng = self.model.rng  # one seeded RNG for every random choice
        self.metrics = SimMetrics()
        self.scale = options.time_scale
        self.ready = False
        self.state = "awake"  # awake | falling_asleep | asleep | waking
        self.sleep_level = 0
        self.requests_seen = 0
        self.created = int(time.time())  # the engine's start: /v1/models only
        self._ids = itertools.count(1)
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, already_ready: bool = False) -> None:
        """Start the step loop and the start-up / fault timers (inside the event loop)."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._step_loop(), name="sim-step-loop"))
        delay = self.profile.startup_s * self.scale
        if already_ready or delay <= 0:
            self._set_ready()
        else:
            loop.call_later(delay, self._set_ready)
        o = self.options
        if o.crash_after_s > 0:
            loop.call_later(o.crash_after_s, _crash, f"crash-after-s {o.crash_after_s}")
        if o.hang_after_s > 0:
            loop.call_later(o.hang_after_s, _hang)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

    def _set_ready(self) -> None:
        self.ready = True
        log.info("engine ready (model %s, profile %s)", self.options.model, self.profile.name)

    # ------------------------------------------------------------------ step loop
    async def _step_loop(self) -> None:
        loop = asyncio.get_running_loop()
        model = self.model
        next_start = loop.time()
        while True:
            if not model.has_work() or self.state != "awake":
                self._work.clear()
                await self._work.wait()
                next_start = loop.time()
                continue
            plan = model.schedule()
            if not plan.scheduled:
                # Nothing fits (cannot happen for admitted requests); do not spin.
                self._work.clear()
                try:
                    await asyncio.wait_for(self._work.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
                continue
            now = loop.time()
            end = max(next_start, now - _MAX_CATCH_UP_S) + plan.duration_s * self.scale
            delay = end - now
            await asyncio.sleep(delay if delay > 0 else 0)
            next_start = end
            result = model.commit(plan)
            self.metrics.observe(result)
            if self.assist_stats is not None:
                self.assist_stats.maybe_write()
            for req, text in result.tokens:
                req.sink.push(text, req.finish_reason)

    # ------------------------------------------------------------------ requests
    def admit(self, parsed: api.ParsedRequest, prefix: str) -> SimRequest:
        """Put a validated request in the queue; faults that strike on arrival happen here."""
        o = self.options
        self.requests_seen += 1
        if o.crash_after_requests and self.requests_seen > o.crash_after_requests:
            _crash(f"crash-after-requests {o.crash_after_requests}")
        if o.crash_on_prompt_tokens and parsed.prompt_tokens >= o.crash_on_prompt_tokens:
            _crash(f"crash-on-prompt-tokens {o.crash_on_prompt_tokens}")
        if o.error_rate and self.rng.random() < o.error_rate:
            raise api.ApiError(500, "simulated engine error (--error-rate)")
        total = parsed.prompt_tokens + parsed.max_tokens
        if not self.model.fits_ever(total):
            raise api.ApiError(400, f"request needs {self.model.blocks_for(total)} KV blocks; "
                               f"the engine has {self.model.total_blocks}", "max_tokens")
        req = SimRequest(f"{prefix}-{next(self._ids)}", parsed.prompt_tokens, parsed.max_tokens,
                         priority=parsed.priority, ignore_eos=parsed.ignore_eos, sink=TokenSink())
        self.model.add(req)
        self._work.set()
        return req

    def add_probe(self, prefix: str) -> SimRequest:
        """A one-token request of the engine's own (SGLang's ``/health_generate``).

        It skips ``admit``: a health probe is not a client request, so it neither
        counts towards nor triggers the arrival faults (crash, error rate).
        """
        req = SimRequest(f"{prefix}-{next(self._ids)}", 1, 1, ignore_eos=True, sink=TokenSink())
        self.model.add(req)
        self._work.set()
        return req

    def abort(self, req: SimRequest) -> None:
        if self.model.abort(req.request_id) is not None:
            self._work.set()

    def unavailable(self) -> api.ApiError | None:
        if not self.ready:
            return api.ApiError(503, "engine is starting up")
        if self.state != "awake":
            return api.ApiError(503, f"engine is {self.state.replace('_', ' ')}")
        return None

    # ------------------------------------------------------------------ sleep
    async def sleep(self, level: int) -> None:
        """Shielded: a client that hangs up mid-transition must not leave it half done."""
        await asyncio.shield(asyncio.ensure_future(self._sleep(level)))

    async def wake(self) -> None:
        await asyncio.shield(asyncio.ensure_future(self._wake()))

    async def _sleep(self, level: int) -> None:
        """vLLM sleep mode: KV cache discarded (in-flight requests fail), then the latency."""
        while self.state in ("falling_asleep", "waking"):  # let the other call finish
            await asyncio.sleep(0.01)
        if self.state == "asleep":
            return
        self.state = "falling_asleep"
        dropped = self.model.abort_all()
        for r in dropped:
            r.sink.fail("engine was put to sleep")
        if dropped:
            log.warning("sleep level %d aborted %d requests in flight", level, len(dropped))
        p = self.profile
        await asyncio.sleep((p.sleep_l2_s if level >= 2 else p.sleep_l1_s) * self.scale)
        self.sleep_level = level
        self.state = "asleep"

    async def _wake(self) -> None:
        while self.state in ("falling_asleep", "waking"):
            await asyncio.sleep(0.01)
        if self.state == "awake":
            return
        self.state = "waking"
        p = self.profile
        await asyncio.sleep((p.wake_l2_s if self.sleep_level >= 2 else p.wake_l1_s) * self.scale)
        self.sleep_level = 0
        self.state = "awake"
        self._work.set()

    @property
    def is_sleeping(self) -> bool:
        return self.state in ("asleep", "waking")


def _crash(why: str) -> None:
    sys.stderr.write(f"sim engine: simulated crash ({why})\n")
    sys.stderr.flush()
    os._exit(1)


def _hang() -> None:
    """Wedge the whole process: the event loop never runs again (health checks hang too)."""
    sys.stderr.write("sim engine: simulated hang (--hang-after-s)\n")
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # still stoppable, like a wedged engine
    while True:
        time.sleep(3600)
