"""The simulated engine's HTTP shell: aiohttp around ``EngineModel``.

One asyncio task runs the step loop (plan → wait the step's duration → commit)
and hands each step's tokens to the waiting responses through a small per-
request ``_Sink`` (a token list plus at most one pending future).  So the cost
per step is one future per *stream that got tokens*, never a task per token,
and a response that fell behind writes all its pending tokens in one write.

A client that goes away is noticed either by aiohttp cancelling the handler
(``handler_cancellation=True`` on the runner) or by a failed write; both reach
the handler's ``finally``, which aborts the sequence in the model at once: its
KV blocks are freed and it is out of the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from infergridd.sim import api
from infergridd.sim.metrics import SimMetrics
from infergridd.sim.model import EngineModel, SimRequest
from infergridd.sim.options import SimOptions
from infergridd.sim.profile import Profile

__all__ = ["SimOptions", "SimEngine", "SimServer", "build_app", "serve", "ENGINE"]

log = logging.getLogger("infergridd.sim")

#: Late steps may catch up by at most this much, so timer jitter does not slow
#: the simulated engine down, but a long stall (a blocked loop) does not
#: become a burst of instant steps either.
_MAX_CATCH_UP_S = 0.005

_JSON = "application/json"


class _Sink:
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
        sglang = options.personality == "sglang"
        self.model = EngineModel(self.profile, clock=time.monotonic, seed=options.seed,
                                 policy=options.scheduling_policy,
                                 priority_sign=-1 if sglang else 1)
        self.rng = self.model.rng  # one seeded RNG for every random choice
        self.metrics = SimMetrics()
        self.scale = options.time_scale
        self.ready = False
        self.state = "awake"  # awake | falling_asleep | asleep | waking
        self.sleep_level = 0
        self.requests_seen = 0
        self.created = int(time.time())
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
            for req, text in result.tokens:
                req.sink.push(text, req.finish_reason)

    # ------------------------------------------------------------------ requests
    def admit(self, parsed: api.ParsedRequest, prefix: str) -> SimRequest:
        """Put a validated request in the queue; faults that strike on arrival happen here."""
        o = self.options
        self.requests_seen += 1
        if o.crash_after_requests and self.requests_seen > o.crash_after_requests:
            _crash(f"crash-after-requests {o.crash_after_requests}")
        if o.error_rate and self.rng.random() < o.error_rate:
            raise api.ApiError(500, "simulated engine error (--error-rate)")
        total = parsed.prompt_tokens + parsed.max_tokens
        if not self.model.fits_ever(total):
            raise api.ApiError(400, f"request needs {self.model.blocks_for(total)} KV blocks; "
                               f"the engine has {self.model.total_blocks}", "max_tokens")
        req = SimRequest(f"{prefix}-{next(self._ids)}", parsed.prompt_tokens, parsed.max_tokens,
                         priority=parsed.priority, ignore_eos=parsed.ignore_eos, sink=_Sink())
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


# ---------------------------------------------------------------------- HTTP handlers

ENGINE = web.AppKey("sim_engine", SimEngine)


def _error(exc: api.ApiError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=_JSON)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app[ENGINE].options.api_key
    if key and request.path.startswith("/v1/"):
        if request.headers.get("Authorization", "") != f"Bearer {key}":
            return _error(api.ApiError(401, "Unauthorized"))
    return await handler(request)


async def _completions(request: web.Request, chat: bool) -> web.StreamResponse:
    eng = request.app[ENGINE]
    err = eng.unavailable()
    if err is not None:
        return _error(err)
    o = eng.options
    try:
        parsed = api.parse_request(
            await request.read(), chat=chat, served_model=o.model,
            max_model_len=eng.profile.max_model_len,
            priority_enabled=o.scheduling_policy == "priority",
            strict_priority=o.personality == "vllm")
        req = eng.admit(parsed, "chatcmpl" if chat else "cmpl")
    except api.ApiError as exc:
        return _error(exc)
    try:
        if parsed.stream:
            return await _stream(request, eng, req, parsed)
        return await _collect(eng, req, parsed)
    finally:
        if req.finish_reason is None:  # cancelled, write failed, or engine slept
            eng.abort(req)


async def _stream(request: web.Request, eng: SimEngine, req: SimRequest,
                  parsed: api.ParsedRequest) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    enc = api.ChunkEncoder(parsed.chat, req.request_id, eng.created, eng.options.model)
    sink: _Sink = req.sink
    o = eng.options
    stall_at = -1
    if o.stall_mid_stream_s > 0 and (o.stall_prob >= 1 or eng.rng.random() < o.stall_prob):
        stall_at = max(1, req.max_tokens // 2)
    sent = 0
    try:
        while True:
            await sink.wait()
            if sink.error is not None:
                await resp.write(api.stream_error(sink.error, 503))
                await resp.write(api.DONE)
                return resp
            toks, sink.buf = sink.buf, []
            parts = []
            if sent == 0 and parsed.chat and toks:
                parts.append(enc.role())
            last = len(toks) - 1
            fin = sink.finish
            for i, t in enumerate(toks):
                parts.append(enc.token(t, fin if i == last else None))
            sent += len(toks)
            if fin is not None and parsed.include_usage:
                parts.append(enc.usage(req.prompt_tokens, req.num_output))
            if fin is not None:
                parts.append(api.DONE)
            await resp.write(b"".join(parts))
            if fin is not None:
                return resp
            if 0 <= stall_at <= sent:
                stall_at = -1
                await asyncio.sleep(o.stall_mid_stream_s * eng.scale)
    except ConnectionError as exc:  # client gone mid-write
        log.debug("stream %s: client went away: %r", req.request_id, exc)
        return resp


async def _collect(eng: SimEngine, req: SimRequest, parsed: api.ParsedRequest) -> web.Response:
    sink: _Sink = req.sink
    text: list[str] = []
    while True:
        await sink.wait()
        if sink.error is not None:
            return _error(api.ApiError(503, sink.error))
        text.extend(sink.buf)
        sink.buf = []
        if sink.finish is not None:
            break
    body = api.full_response(parsed.chat, req.request_id, eng.created, eng.options.model,
                             "".join(text), sink.finish, req.prompt_tokens, req.num_output)
    return web.Response(body=body, content_type=_JSON)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, chat=False)


async def models(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    name = eng.options.model
    owner = "sglang" if eng.options.personality == "sglang" else "vllm"
    return _json({"object": "list", "data": [{
        "id": name, "object": "model", "created": eng.created, "owned_by": owner, "root": name,
        "parent": None, "max_model_len": eng.profile.max_model_len}]})


async def health(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.Response(status=200 if eng.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    if eng.options.personality == "sglang":
        text = eng.metrics.render_sglang(eng.model, eng.options.model)
    else:
        text = eng.metrics.render_vllm(eng.model, eng.options.model)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


# vLLM dev endpoints (VLLM_SERVER_DEV_MODE=1) ---------------------------------------

async def sleep_handler(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    try:
        level = int(request.query.get("level", "1"))
    except ValueError:
        level = 0
    if level not in (1, 2):
        return _error(api.ApiError(400, "level must be 1 or 2", "level"))
    await eng.sleep(level)
    return web.Response(status=200)


async def wake_up(request: web.Request) -> web.Response:
    await request.app[ENGINE].wake()
    return web.Response(status=200)


async def is_sleeping(request: web.Request) -> web.Response:
    return _json({"is_sleeping": request.app[ENGINE].is_sleeping})


# SGLang endpoints ------------------------------------------------------------------

async def health_generate(request: web.Request) -> web.Response:
    """SGLang runs a one-token generation through the scheduler to prove it works."""
    eng = request.app[ENGINE]
    if eng.unavailable() is not None:
        return web.Response(status=503)
    parsed = api.ParsedRequest(chat=False, prompt_tokens=1, max_tokens=1, stream=False,
                               include_usage=False, priority=0, ignore_eos=True)
    req = SimRequest(f"health-{next(eng._ids)}", 1, 1, ignore_eos=True, sink=_Sink())
    eng.model.add(req)
    eng._work.set()
    try:
        await _collect(eng, req, parsed)
    finally:
        if req.finish_reason is None:
            eng.abort(req)
    return web.Response(status=200 if req.finish_reason else 503)


async def get_server_info(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    p, o = eng.profile, eng.options
    return _json({
        "model_path": o.model, "served_model_name": o.model, "tokenizer_path": o.model,
        "host": o.host, "port": request.url.port,
        "max_running_requests": p.max_num_seqs, "max_total_num_tokens": p.kv_blocks * p.block_size,
        "chunked_prefill_size": p.max_num_batched_tokens, "context_length": p.max_model_len,
        "page_size": p.block_size, "schedule_policy": "fcfs",
        "enable_priority_scheduling": o.scheduling_policy == "priority",
        "schedule_low_priority_values_first": False,
        "version": "0.0.0-sim",
        "internal_states": [{"memory_usage": {"kv_cache_usage": eng.model.kv_usage},
                             "num_running_reqs": eng.model.num_running,
                             "num_queue_reqs": eng.model.num_waiting}],
    })


async def get_model_info(request: web.Request) -> web.Response:
    name = request.app[ENGINE].options.model
    return _json({"model_path": name, "tokenizer_path": name, "is_generation": True})


async def release_memory(request: web.Request) -> web.Response:
    await request.app[ENGINE].sleep(2)  # weights and KV cache both released
    return _json({"success": True, "message": ""})


async def resume_memory(request: web.Request) -> web.Response:
    await request.app[ENGINE].wake()
    return _json({"success": True, "message": ""})


# ---------------------------------------------------------------------- app and server

def build_app(options: SimOptions, *, ready_at_start: bool = False) -> web.Application:
    """The aiohttp application; the engine starts with the app (``on_startup``).

    Run it under ``web.AppRunner(app, handler_cancellation=True)`` (``SimServer``
    does), or client disconnects are only noticed at the next write.
    """
    eng = SimEngine(options)
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024 * 1024)
    app[ENGINE] = eng

    async def on_startup(app: web.Application) -> None:
        eng.start(already_ready=ready_at_start)

    async def on_cleanup(app: web.Application) -> None:
        await eng.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_get("/v1/models", models)
    r.add_get("/health", health)
    r.add_get("/metrics", metrics)
    if options.personality == "sglang":
        r.add_get("/health_generate", health_generate)
        r.add_get("/get_server_info", get_server_info)
        r.add_get("/get_model_info", get_model_info)
        r.add_post("/release_memory_occupation", release_memory)
        r.add_post("/resume_memory_occupation", resume_memory)
    else:
        r.add_post("/sleep", sleep_handler)
        r.add_post("/wake_up", wake_up)
        r.add_get("/is_sleeping", is_sleeping)
    return app


class SimServer:
    """A sim engine listening on a TCP port, in this process (tests) or as ``__main__``."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.port}"

    @property
    def engine(self) -> SimEngine:
        assert self.app is not None
        return self.app[ENGINE]

    async def start(self) -> SimServer:
        o = self.options
        slow = o.slow_start
        self.app = build_app(o, ready_at_start=slow)
        if slow:  # like vLLM itself: nothing answers until the engine is up
            await asyncio.sleep(self.app[ENGINE].profile.startup_s * o.time_scale)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, o.host, o.port, backlog=1024)
        await site.start()
        self.port = self._bound_port()
        if o.port_file:
            tmp = Path(o.port_file + ".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(o.port_file)  # atomic: a reader never sees a half-written port
        log.info("sim engine %s (%s, profile %s) listening on %s", o.model, o.personality,
                 self.engine.profile.name, self.url)
        return self

    def _bound_port(self) -> int:
        assert self.runner is not None
        for addr in self.runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        raise RuntimeError("the sim engine is not listening on any TCP address")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(options: SimOptions) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = SimServer(options)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
