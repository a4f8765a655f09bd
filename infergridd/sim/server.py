"""The simulated engine as an aiohttp server: the app, its listener (TCP or a Unix socket),
``serve``.

The pieces live beside it, one concept each: ``steploop`` (``SimEngine``: the
model, the step loop, sleep and faults), ``http_openai`` (the endpoints both
personalities serve), ``http_vllm`` and ``http_sglang`` (each dialect's own
control endpoints).  Tests and the benchmark start a ``SimServer`` in process;
``python -m infergridd.sim`` runs ``serve``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from infergridd.sim import http_openai, http_sglang, http_vllm
from infergridd.sim.http_openai import ENGINE
from infergridd.sim.options import SimOptions
from infergridd.sim.steploop import SimEngine

__all__ = ["SimOptions", "SimEngine", "SimServer", "build_app", "serve", "ENGINE"]

log = logging.getLogger("infergridd.sim")


def build_app(options: SimOptions, *, ready_at_start: bool = False) -> web.Application:
    """The aiohttp application and its URL map; the engine starts with the app (``on_startup``).

    Run it under ``web.AppRunner(app, handler_cancellation=True)`` (``SimServer``
    does), or client disconnects are only noticed at the next write.
    """
    eng = SimEngine(options)
    app = web.Application(middlewares=[http_openai.auth], client_max_size=64 * 1024 * 1024)
    app[ENGINE] = eng

    async def on_startup(app: web.Application) -> None:
        eng.start(already_ready=ready_at_start)

    async def on_cleanup(app: web.Application) -> None:
        await eng.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r, oa = app.router, http_openai
    r.add_post("/v1/chat/completions", oa.chat_completions)
    r.add_post("/v1/completions", oa.completions)
    r.add_get("/v1/models", oa.models)
    r.add_get("/health", oa.health)
    r.add_get("/metrics", oa.metrics)
    if options.personality == "sglang":
        sg = http_sglang
        r.add_get("/health_generate", sg.health_generate)
        r.add_get("/get_server_info", sg.get_server_info)
        r.add_get("/get_model_info", sg.get_model_info)
        r.add_post("/release_memory_occupation", sg.release_memory)
        r.add_post("/resume_memory_occupation", sg.resume_memory)
    else:
        r.add_post("/sleep", http_vllm.sleep_handler)
        r.add_post("/wake_up", http_vllm.wake_up)
        r.add_get("/is_sleeping", http_vllm.is_sleeping)
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
        """Its base URL; ``unix:/path.sock`` on a Unix socket (``engines/unixhttp.py``)."""
        if self.options.uds:
            return f"unix:{self.options.uds}"
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
        if o.uds:
            # as vLLM: bind fails on a leftover socket file; the supervisor removes it first
            site: web.BaseSite = web.UnixSite(self.runner, o.uds, backlog=1024)
            await site.start()
        else:
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
